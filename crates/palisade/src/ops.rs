//! Operator commands (SPEC section 2): `nodes`, `stats`, `connections`, `policy`, `keys`,
//! `revoke`, `disconnect`, `send`, `drain`, talking to the controller's FleetControl over
//! mTLS. Human tables by default, JSON with `--output json`. Exit codes: 0 success, 1 the
//! operation failed (per node where it matters), 2 usage error (clap).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use palisade_policy::wire;
use palisade_proto::controller::v1 as pb;
use palisade_proto::controller::v1::fleet_control_client::FleetControlClient;
use palisade_proto::node::v1 as npb;
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// How to reach the controller.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Controller address (host:port).
    #[arg(long, env = "PALISADE_CONTROLLER", global = true)]
    pub controller: Option<String>,
    /// CA that the controller's certificate chains to.
    #[arg(long, env = "PALISADE_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Operator client certificate (PEM).
    #[arg(long, env = "PALISADE_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Operator client key (PEM).
    #[arg(long, env = "PALISADE_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Talk plain text to a controller started with --insecure-control-plane.
    #[arg(long, global = true)]
    pub insecure: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the fleet's policy (YAML; JSON with -o json).
    Get,
    /// Validate, store and push a policy file (YAML or JSON).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what applying a file would change.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the verification keys.
    List,
    /// Add a key (rotation: add the new key, later retire the old one).
    Add {
        #[arg(long)]
        kid: String,
        #[arg(long)]
        alg: String,
        /// Public key: a PEM file or the PEM text.
        #[arg(long, conflicts_with = "secret_base64")]
        public_key: Option<String>,
        /// HMAC secret in base64 (HS256/384/512).
        #[arg(long)]
        secret_base64: Option<String>,
    },
    /// Remove a key.
    Retire {
        #[arg(long)]
        kid: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Sessions of this subject (`sub`).
    #[arg(long)]
    pub user: Option<String>,
    /// The session with this token id (`jti`).
    #[arg(long)]
    pub session: Option<String>,
    /// One connection.
    #[arg(long)]
    pub conn: Option<String>,
    /// Every session from this client address.
    #[arg(long)]
    pub ip: Option<std::net::IpAddr>,
    /// Every session.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SendTarget {
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub conn: Option<String>,
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// Every token of this subject (or those issued before --issued-before).
    #[arg(long)]
    pub user: Option<String>,
    /// The token with this `jti`.
    #[arg(long)]
    pub session: Option<String>,
}

fn selector(t: &Target) -> npb::Selector {
    use npb::selector::Target as T;
    let target = if let Some(u) = &t.user {
        T::Subject(u.clone())
    } else if let Some(s) = &t.session {
        T::Session(s.clone())
    } else if let Some(c) = &t.conn {
        T::ConnId(c.clone())
    } else if let Some(ip) = t.ip {
        T::ClientAddress(ip.to_string())
    } else {
        T::All(true)
    };
    npb::Selector { target: Some(target) }
}

/// A FleetControl client whose requests carry the current trace context (the operator
/// command's span, started by the `trace` module).
pub type Fleet = FleetControlClient<
    tonic::service::interceptor::InterceptedService<Channel, fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>>,
>;

fn with_trace_context(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    opentelemetry::Context::map_current(|cx| palisade_plane::telemetry::inject(cx, r.metadata_mut()));
    Ok(r)
}

pub async fn client(c: &Conn) -> anyhow::Result<Fleet> {
    let addr = c.controller.clone().context("no controller: pass --controller or set PALISADE_CONTROLLER")?;
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let channel = if c.insecure {
        Channel::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(5)).connect().await
    } else {
        let read = |p: &Option<PathBuf>, what: &str, env: &str| -> anyhow::Result<String> {
            let p = p.as_ref().with_context(|| format!("no {what}: pass --{what} or set {env}"))?;
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&c.ca, "ca", "PALISADE_CA")?))
            .identity(Identity::from_pem(read(&c.cert, "cert", "PALISADE_CERT")?, read(&c.key, "key", "PALISADE_KEY")?))
            .domain_name(host);
        Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect_timeout(Duration::from_secs(5)).connect().await
    }
    .with_context(|| format!("cannot reach the controller at {addr}"))?;
    let inject: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = with_trace_context;
    Ok(FleetControlClient::with_interceptor(channel, inject).max_decoding_message_size(16 * 1024 * 1024))
}

fn rpc_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_owned() })
}

fn print(out: Output, v: &Value, table: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => print!("{}", table()),
    }
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

fn results_json(version: u64, results: &[pb::NodeResult], converged: bool) -> Value {
    json!({
        "version": version,
        "converged": converged,
        "nodes": results.iter().map(|r| json!({"node": r.node_id, "ok": r.ok, "version": r.version, "error": r.error})).collect::<Vec<_>>(),
    })
}

/// Prints per-node results; an error when any node failed.
fn report(out: Output, what: &str, version: u64, results: &[pb::NodeResult], converged: bool) -> anyhow::Result<()> {
    print(out, &results_json(version, results, converged), || {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| vec![r.node_id.clone(), if r.ok { "ok".into() } else { "FAILED".into() }, r.version.to_string(), r.error.clone()])
            .collect();
        format!(
            "{what}: version {version}, {}\n{}",
            if converged { "every node applied it" } else { "NOT converged" },
            table(&["NODE", "RESULT", "VERSION", "ERROR"], &rows)
        )
    });
    if !converged {
        let failed: Vec<String> = results.iter().filter(|r| !r.ok).map(|r| format!("{}: {}", r.node_id, r.error)).collect();
        bail!("{what}: not every node applied version {version} ({})", failed.join("; "));
    }
    Ok(())
}

fn counts(out: Output, verb: &str, nodes: &[pb::NodeCount], total: u32) -> anyhow::Result<()> {
    let v = json!({
        "total": total,
        "nodes": nodes.iter().map(|n| json!({"node": n.node_id, "ok": n.ok, "count": n.count, "error": n.error})).collect::<Vec<_>>(),
    });
    print(out, &v, || {
        let rows: Vec<Vec<String>> = nodes.iter().map(|n| vec![n.node_id.clone(), n.count.to_string(), n.error.clone()]).collect();
        format!("{verb}: {total}\n{}", table(&["NODE", "COUNT", "ERROR"], &rows))
    });
    let failed: Vec<String> = nodes.iter().filter(|n| !n.ok).map(|n| format!("{}: {}", n.node_id, n.error)).collect();
    if !failed.is_empty() {
        bail!("{verb}: some nodes failed ({})", failed.join("; "));
    }
    Ok(())
}

fn stats_json(s: &npb::Stats) -> Value {
    json!({
        "node": s.node_id, "policy_version": s.policy_version, "active_connections": s.active_connections,
        "handshakes_accepted": s.handshakes_accepted, "handshakes_refused": s.handshakes_refused,
        "messages_in": s.messages_in, "messages_out": s.messages_out, "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
        "buffered_bytes": s.buffered_bytes, "egress_alerts": s.egress_alerts, "ready": s.ready, "draining": s.draining, "uptime_seconds": s.uptime_seconds,
    })
}

fn conn_json(node: &str, c: &npb::Connection) -> Value {
    json!({
        "node": node, "conn_id": c.conn_id, "subject": c.subject, "session": c.session, "client_address": c.client_address,
        "route": c.route, "started_unix_ms": c.started_unix_ms, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
        "messages_in": c.messages_in, "messages_out": c.messages_out, "buffered_bytes": c.buffered_bytes,
    })
}

fn read_policy_file(file: &PathBuf) -> anyhow::Result<palisade_policy::Policy> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = palisade_policy::Policy::from_yaml_or_json(&text)?;
    doc.compile(1)?; // validate locally first: the error names the field
    Ok(doc)
}

pub async fn nodes(c: &Conn) -> anyhow::Result<()> {
    let r = client(c).await?.list_nodes(pb::ListNodesRequest {}).await.map_err(rpc_err)?.into_inner();
    let v = json!(r.nodes.iter().map(|n| json!({"id": n.id, "wss": n.wss_address, "control": n.control_address, "version": n.version, "reachable": n.reachable, "started_unix_ms": n.started_unix_ms})).collect::<Vec<_>>());
    print(c.output, &v, || {
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.clone(),
                    n.wss_address.clone(),
                    n.control_address.clone(),
                    if n.reachable { "yes" } else { "no" }.into(),
                    n.version.clone(),
                ]
            })
            .collect();
        table(&["ID", "WSS", "CONTROL", "REACHABLE", "VERSION"], &rows)
    });
    Ok(())
}

pub async fn stats(c: &Conn, watch: bool) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    loop {
        let r = client.get_fleet_stats(pb::GetFleetStatsRequest {}).await.map_err(rpc_err)?.into_inner();
        let totals = r.totals.clone().unwrap_or_default();
        let v = json!({"totals": stats_json(&totals), "nodes": r.nodes.iter().map(stats_json).collect::<Vec<_>>(), "unreachable": r.unreachable_node_ids});
        print(c.output, &v, || {
            let mut rows: Vec<Vec<String>> = r.nodes.iter().map(row).collect();
            rows.push(row(&totals));
            let mut s =
                table(&["NODE", "POLICY", "ACTIVE", "ACCEPTED", "REFUSED", "MSG IN", "MSG OUT", "BYTES IN", "BYTES OUT", "READY"], &rows);
            if !r.unreachable_node_ids.is_empty() {
                s += &format!("unreachable: {}\n", r.unreachable_node_ids.join(", "));
            }
            s
        });
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn row(s: &npb::Stats) -> Vec<String> {
    vec![
        s.node_id.clone(),
        s.policy_version.to_string(),
        s.active_connections.to_string(),
        s.handshakes_accepted.to_string(),
        s.handshakes_refused.to_string(),
        s.messages_in.to_string(),
        s.messages_out.to_string(),
        s.bytes_in.to_string(),
        s.bytes_out.to_string(),
        if s.draining { "draining".into() } else { s.ready.to_string() },
    ]
}

pub async fn connections(c: &Conn, user: Option<String>, node: Option<String>) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    // A subject across the whole fleet is FindSubject; anything else is ListConnections.
    let (found, unreachable) = match (user, node) {
        (Some(subject), None) => {
            let r = client.find_subject(pb::FindSubjectRequest { subject }).await.map_err(rpc_err)?.into_inner();
            (r.connections, r.unreachable_node_ids)
        }
        (user, node) => {
            let selector = user.map(|u| npb::Selector { target: Some(npb::selector::Target::Subject(u)) });
            let r = client
                .list_connections(pb::ListConnectionsRequest { selector, node_id: node.unwrap_or_default(), limit_per_node: 1000 })
                .await
                .map_err(rpc_err)?
                .into_inner();
            (r.connections, r.unreachable_node_ids)
        }
    };
    let r = pb::ListConnectionsResponse { connections: found, unreachable_node_ids: unreachable };
    let conns: Vec<(String, npb::Connection)> = r.connections.into_iter().filter_map(|sc| sc.connection.map(|c| (sc.node_id, c))).collect();
    let v = json!({"connections": conns.iter().map(|(n, c)| conn_json(n, c)).collect::<Vec<_>>(), "unreachable": r.unreachable_node_ids});
    print(c.output, &v, || {
        let rows: Vec<Vec<String>> = conns
            .iter()
            .map(|(n, c)| {
                vec![
                    n.clone(),
                    c.conn_id.clone(),
                    c.subject.clone(),
                    c.session.clone(),
                    c.client_address.clone(),
                    c.route.clone(),
                    c.bytes_in.to_string(),
                    c.bytes_out.to_string(),
                ]
            })
            .collect();
        table(&["NODE", "CONN", "SUBJECT", "SESSION", "CLIENT", "ROUTE", "BYTES IN", "BYTES OUT"], &rows)
    });
    if !r.unreachable_node_ids.is_empty() {
        bail!("some nodes could not be asked: {}", r.unreachable_node_ids.join(", "));
    }
    Ok(())
}

pub async fn policy(c: &Conn, cmd: PolicyCommand) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    match cmd {
        PolicyCommand::Get => {
            let v = client.get_policy(pb::GetPolicyRequest {}).await.map_err(rpc_err)?.into_inner().policy.context("empty answer")?;
            let doc = wire::document(&v)?;
            match c.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&json!({"version": v.version, "policy": doc}))?),
                Output::Table => print!("# version {}\n{}", v.version, doc.to_yaml()),
            }
            Ok(())
        }
        PolicyCommand::Apply { file, dry_run } => {
            let doc = read_policy_file(&file)?;
            // Routes are node configuration: a rule for a route no node serves is allowed,
            // but probably a typo.
            if !doc.access.is_empty()
                && let Ok(nodes) = client.list_nodes(pb::ListNodesRequest {}).await
            {
                let nodes = nodes.into_inner().nodes;
                let served: std::collections::HashSet<&str> = nodes.iter().flat_map(|n| n.routes.iter().map(String::as_str)).collect();
                for (i, r) in doc.access.iter().enumerate() {
                    if !nodes.is_empty() && !served.contains(r.route.as_str()) {
                        eprintln!("warning: access[{i}].route: no registered node serves `{}`", r.route);
                    }
                }
            }
            let r = client
                .apply_policy(pb::ApplyPolicyRequest { policy: Some(wire::versioned(0, &doc)), dry_run, expected_version: None })
                .await
                .map_err(rpc_err)?
                .into_inner();
            report(c.output, if dry_run { "dry run" } else { "policy applied" }, r.version, &r.results, r.converged)
        }
        PolicyCommand::Diff { file } => {
            let new = read_policy_file(&file)?;
            let cur = match client.get_policy(pb::GetPolicyRequest {}).await {
                Ok(r) => r.into_inner().policy.map(|v| wire::document(&v)).transpose()?,
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => return Err(rpc_err(s)),
            };
            let old_text = cur.map(|p| p.to_yaml()).unwrap_or_default();
            let lines = diff_lines(&old_text, &new.to_yaml());
            match c.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"changed": lines.iter().any(|l| !l.starts_with(' ')), "diff": lines}))?
                ),
                Output::Table => {
                    for l in lines.iter().filter(|l| !l.starts_with(' ')) {
                        println!("{l}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// A line diff (longest common subsequence): `-` removed, `+` added, ` ` kept.
pub fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}

pub async fn keys(c: &Conn, cmd: KeysCommand) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    match cmd {
        KeysCommand::List => {
            let v = client.get_policy(pb::GetPolicyRequest {}).await.map_err(rpc_err)?.into_inner().policy.context("empty answer")?;
            let doc = wire::document(&v)?;
            let keys: Vec<Value> = doc
                .auth
                .keys
                .iter()
                .map(|k| json!({"kid": k.kid, "alg": k.alg, "type": if k.secret_base64.is_some() { "secret" } else { "public key" }}))
                .collect();
            print(c.output, &json!({"version": v.version, "keys": keys, "jwks_url": doc.auth.jwks_url}), || {
                let rows: Vec<Vec<String>> = doc
                    .auth
                    .keys
                    .iter()
                    .map(|k| vec![k.kid.clone(), k.alg.clone(), if k.secret_base64.is_some() { "secret" } else { "public key" }.into()])
                    .collect();
                table(&["KID", "ALG", "TYPE"], &rows)
            });
            Ok(())
        }
        KeysCommand::Add { kid, alg, public_key, secret_base64 } => {
            let public_key_pem = match public_key {
                Some(p) if p.contains("-----BEGIN") => Some(p),
                Some(p) => Some(std::fs::read_to_string(&p).with_context(|| format!("--public-key: cannot read {p}"))?),
                None => None,
            };
            if public_key_pem.is_none() && secret_base64.is_none() {
                bail!("give --public-key (asymmetric algorithms) or --secret-base64 (HMAC)");
            }
            let r = client
                .add_key(pb::AddKeyRequest { kid: kid.clone(), alg, public_key_pem, secret_base64 })
                .await
                .map_err(rpc_err)?
                .into_inner();
            report(c.output, &format!("key {kid} added"), r.version, &r.results, r.converged)
        }
        KeysCommand::Retire { kid } => {
            let r = client.retire_key(pb::RetireKeyRequest { kid: kid.clone() }).await.map_err(rpc_err)?.into_inner();
            report(c.output, &format!("key {kid} retired"), r.version, &r.results, r.converged)
        }
    }
}

pub async fn revoke(c: &Conn, t: RevokeTarget, issued_before: Option<String>, expires: Option<String>) -> anyhow::Result<()> {
    use pb::revoke_request::Target as T;
    let target = match (t.user, t.session) {
        (Some(u), _) => T::Subject(u),
        (None, Some(s)) => T::Session(s),
        (None, None) => bail!("give --user or --session"),
    };
    let r =
        client(c).await?.revoke(pb::RevokeRequest { target: Some(target), issued_before, expires }).await.map_err(rpc_err)?.into_inner();
    report(c.output, "revocation applied", r.version, &r.results, r.converged)
}

pub async fn disconnect(c: &Conn, t: Target, node: Option<String>, code: u32, reason: Option<String>) -> anyhow::Result<()> {
    if !(4000..=4999).contains(&code) {
        bail!("--code must be between 4000 and 4999");
    }
    let r = client(c)
        .await?
        .disconnect(pb::DisconnectRequest {
            selector: Some(selector(&t)),
            code,
            reason: reason.unwrap_or_default(),
            node_id: node.unwrap_or_default(),
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    counts(c.output, "disconnected", &r.nodes, r.closed)
}

pub async fn send(c: &Conn, t: SendTarget, data: String, node: Option<String>) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(&data).context("--data must be JSON")?;
    let target = Target { user: t.user, session: None, conn: t.conn, ip: None, all: t.all };
    let r = client(c)
        .await?
        .send(pb::SendRequest {
            selector: Some(selector(&target)),
            payload: data.into_bytes(),
            binary: false,
            node_id: node.unwrap_or_default(),
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    counts(c.output, "delivered", &r.nodes, r.delivered)
}

pub async fn drain(c: &Conn, node: String, deadline_seconds: u32) -> anyhow::Result<()> {
    let r = client(c).await?.drain(pb::DrainRequest { node_id: node, deadline_seconds }).await.map_err(rpc_err)?.into_inner();
    print(c.output, &json!({"node": r.node_id, "sessions_at_start": r.sessions_at_start}), || {
        format!("draining {}: {} sessions will be closed with 1001\n", r.node_id, r.sessions_at_start)
    });
    Ok(())
}

/// `palisade events`: the fleet's audit events, from `FleetControl.WatchEvents`.
pub struct EventsArgs {
    pub follow: bool,
    pub user: Option<String>,
    pub node: Option<String>,
    pub result: Option<String>,
    pub code: Option<String>,
    pub limit: u32,
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn event_json(e: &npb::Event) -> Value {
    json!({
        "time": rfc3339_ms(e.unix_ms), "unix_ms": e.unix_ms, "node": e.node_id, "event": e.kind, "result": e.result,
        "code": e.code, "status": e.status, "close_code": e.close_code, "subject": e.subject, "route": e.route,
        "conn_id": e.conn_id, "client_address": e.client_address, "origin": e.origin, "carrier": e.carrier,
        "reason": e.reason, "trace_id": e.trace_id, "policy_version": e.policy_version, "duration_us": e.duration_us,
        "bytes_in": e.bytes_in, "bytes_out": e.bytes_out, "count": e.count, "source": e.source,
    })
}

fn event_row(e: &npb::Event) -> Vec<String> {
    let code = match (e.code.is_empty(), e.close_code) {
        (true, c) if c != 0 => c.to_string(),
        _ => e.code.clone(),
    };
    let subject = if e.kind == "policy" && e.policy_version != 0 { format!("v{}", e.policy_version) } else { e.subject.clone() };
    vec![rfc3339_ms(e.unix_ms), e.node_id.clone(), e.kind.clone(), e.result.clone(), code, subject, e.route.clone(), e.trace_id.clone()]
}

const EVENT_HEADER: [&str; 8] = ["TIME", "NODE", "EVENT", "RESULT", "CODE", "SUBJECT", "ROUTE", "TRACE ID"];

pub async fn events(c: &Conn, a: EventsArgs) -> anyhow::Result<()> {
    use pb::events_message::Item;
    use std::io::Write as _;
    let req = pb::WatchEventsRequest {
        node_id: a.node.unwrap_or_default(),
        subject: a.user.unwrap_or_default(),
        result: a.result.unwrap_or_default(),
        code: a.code.unwrap_or_default(),
        follow: a.follow,
        limit: a.limit,
    };
    let mut stream = client(c).await?.watch_events(req).await.map_err(rpc_err)?.into_inner();
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    let mut out = std::io::stdout().lock();
    // Following: rows of fixed widths as events come; else one padded table at the end.
    let fixed = |cells: Vec<String>| {
        let w = [24, 14, 14, 9, 22, 16, 12, 32];
        let mut s = cells.iter().zip(w).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    if a.follow && c.output == Output::Table {
        write!(out, "{}", fixed(EVENT_HEADER.iter().map(|h| h.to_string()).collect()))?;
    }
    while let Some(m) = stream.message().await.map_err(rpc_err)? {
        match m.item {
            Some(Item::Event(e)) => match (c.output, a.follow) {
                (Output::Json, _) => writeln!(out, "{}", event_json(&e))?,
                (Output::Table, true) => write!(out, "{}", fixed(event_row(&e)))?,
                (Output::Table, false) => rows.push(event_row(&e)),
            },
            Some(Item::Dropped(d)) => {
                let from = if d.node_id.is_empty() { String::new() } else { format!(" (node {})", d.node_id) };
                match c.output {
                    Output::Json => writeln!(out, "{}", json!({"dropped": d.count, "node": d.node_id}))?,
                    Output::Table => writeln!(out, "dropped {} events{from}", d.count)?,
                }
            }
            Some(Item::Watching(w)) => {
                if c.output == Output::Json {
                    writeln!(out, "{}", json!({"watching": w.node_ids, "unreachable": w.unreachable_node_ids}))?;
                }
                if !w.unreachable_node_ids.is_empty() {
                    eprintln!("warning: no events from unreachable nodes: {}", w.unreachable_node_ids.join(", "));
                }
                unreachable = w.unreachable_node_ids;
            }
            None => {}
        }
        out.flush()?;
    }
    if !a.follow && c.output == Output::Table {
        write!(out, "{}", table(&EVENT_HEADER, &rows))?;
    }
    if !a.follow && !unreachable.is_empty() {
        bail!("some nodes could not be asked: {}", unreachable.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn diff_marks_changes() {
        let d = diff_lines("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, vec![" a", "-b", " c", "+d"]);
    }

    #[test]
    fn tables_pad_columns() {
        assert_eq!(table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]), "A    BB\nxxx  y\n");
    }
}
