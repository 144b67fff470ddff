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

mod events;
mod fleet;
mod policy;

pub use events::*;
pub use fleet::*;
pub use policy::*;

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
    /// Validate, store and push a policy file (YAML or JSON). A file from `policy get`
    /// (headed `# version N`) is stored only if the fleet's policy is still version N, so
    /// a change made meanwhile (a revocation, a retired key) is never silently undone.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        /// Store only if the fleet's policy is this version (overrides the file's header).
        #[arg(long, conflicts_with = "force")]
        expected_version: Option<u64>,
        /// Store over whatever version the fleet has (ignores the file's `# version N`).
        #[arg(long)]
        force: bool,
    },
    /// Show what applying a file would change.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Each node's policy version against the fleet's: ok, lagging (since when),
    /// diverged or unreachable. Exits 1 when the fleet has not converged.
    Status,
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
        "fleet_cap": {"reserved": s.fleet_cap_reserved, "refused": s.fleet_cap_refused, "fallbacks": s.fleet_cap_fallbacks},
        "token_cache": {"hits": s.token_cache_hits, "entries": s.token_cache_entries},
        "wss_cert_seconds_left": s.wss_cert_seconds_left, "control_cert_seconds_left": s.control_cert_seconds_left,
    })
}

fn conn_json(node: &str, c: &npb::Connection) -> Value {
    json!({
        "node": node, "conn_id": c.conn_id, "subject": c.subject, "session": c.session, "client_address": c.client_address,
        "route": c.route, "started_unix_ms": c.started_unix_ms, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
        "messages_in": c.messages_in, "messages_out": c.messages_out, "buffered_bytes": c.buffered_bytes,
    })
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
