//! Command line: `palisade node`, `dev`, `token`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "palisade", version, about = "Secure WebSocket edge: nodes, controller, dev fleet, operator commands")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub conn: crate::ops::Conn,
    /// Say more: an operator command prints its trace id (on stderr) when traced.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an edge node.
    Node {
        #[arg(long, env = "PALISADE_CONFIG")]
        config: PathBuf,
        /// Serve the control plane in plain text without client certificates (never in
        /// production; logs a warning).
        #[arg(long)]
        insecure_control_plane: bool,
        /// Validate the configuration and every file it names, print `ok` and exit (1 with
        /// the field on a problem); binds nothing.
        #[arg(long)]
        check_config: bool,
    },
    /// Run the controller.
    Controller {
        #[arg(long, env = "PALISADE_CONTROLLER_CONFIG")]
        config: PathBuf,
        /// Plain-text control plane on both sides (never in production; logs a warning).
        #[arg(long)]
        insecure_control_plane: bool,
        /// Validate the configuration and every file it names, print `ok` and exit (1 with
        /// the field on a problem); binds nothing.
        #[arg(long)]
        check_config: bool,
    },
    /// List the fleet's nodes.
    Nodes,
    /// Fleet statistics (totals and per node).
    Stats {
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Live sessions across the fleet.
    Connections {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// The fleet's policy.
    Policy {
        #[command(subcommand)]
        command: crate::ops::PolicyCommand,
    },
    /// Signing-key rotation.
    Keys {
        #[command(subcommand)]
        command: crate::ops::KeysCommand,
    },
    /// Revoke a subject's tokens or one token; live sessions are closed too (4003).
    Revoke {
        #[command(flatten)]
        target: crate::ops::RevokeTarget,
        /// RFC 3339: with --user, only tokens issued before this time.
        #[arg(long)]
        issued_before: Option<String>,
        /// RFC 3339: when the entry may be dropped.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Close sessions across the fleet.
    Disconnect {
        #[command(flatten)]
        target: crate::ops::Target,
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 4003, value_parser = clap::value_parser!(u32).range(4000..=4999))]
        code: u32,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Push a message to live sessions.
    Send {
        #[command(flatten)]
        target: crate::ops::SendTarget,
        /// The message (JSON).
        #[arg(long)]
        data: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// The fleet's audit events (handshakes, session ends, disconnects, policy changes,
    /// egress alerts), each with its trace id: the recent ones, or new ones with --follow.
    Events {
        /// Keep watching and print new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only this subject's events.
        #[arg(long)]
        user: Option<String>,
        /// Only this node's events.
        #[arg(long)]
        node: Option<String>,
        /// Only events with this result.
        #[arg(long, value_parser = ["accepted", "refused", "closed", "applied", "rejected", "alert"])]
        result: Option<String>,
        /// Only events with this code (`token_invalid`) or close code (`4003`).
        #[arg(long)]
        code: Option<String>,
        /// Without --follow: at most this many, the newest (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Gracefully drain one node.
    Drain {
        node: String,
        /// Seconds over which sessions are closed (0: the node's configured deadline).
        #[arg(long, default_value_t = 0)]
        deadline: u32,
    },
    /// The whole fleet on this machine, with dev certificates, key and policy under --dir.
    Dev {
        #[arg(long, default_value = "palisade-dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// etcd endpoint; without it an in-process registry is used.
        #[arg(long)]
        etcd: Option<String>,
        /// Upstream WebSocket server for the /app route.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Dev and test helpers for JWTs.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a token with a private key (PKCS#8 PEM) or an HMAC secret (base64 file).
    Mint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "15m")]
        ttl: String,
        #[arg(long)]
        kid: Option<String>,
        /// Algorithm; inferred from the key when omitted.
        #[arg(long)]
        alg: Option<String>,
        #[arg(long)]
        aud: Option<String>,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        jti: Option<String>,
    },
    /// Decode a token; with --policy, verify it as a node would (and with --route, apply
    /// that route's access rule): prints `valid`, `forbidden` or the refusal code.
    Check {
        token: String,
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long, requires = "policy")]
        route: Option<String>,
    },
}

/// The process's logging and the telemetry settings (SPEC section 9): JSON lines on
/// stdout, or text (`PALISADE_LOG_FORMAT=text`, and `palisade dev` on a terminal); OTLP
/// log records too when logs are exported. Invalid `OTEL_*` settings stop the start.
pub fn init_logging(dev: bool) -> anyhow::Result<()> {
    let signals = palisade_plane::telemetry::process_signals().clone().map_err(anyhow::Error::msg)?;
    palisade_plane::telemetry::init_logging(palisade_plane::telemetry::LogFormat::from_env(dev), signals.logs);
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let verbose = cli.verbose;
    match operator_verb(&cli.command) {
        Some(verb) => crate::trace::operator(&verb, verbose, run_command(cli)).await,
        None => run_command(cli).await,
    }
}

/// The verb of an operator command (`disconnect`), `None` for the others (`node`,
/// `controller`, `dev`, `token`).
fn operator_verb(c: &Command) -> Option<String> {
    use Command as C;
    if matches!(c, C::Node { .. } | C::Controller { .. } | C::Dev { .. } | C::Token { .. }) {
        return None;
    }
    let debug = format!("{c:?}");
    let name = debug.split([' ', '{', '(']).next().unwrap_or_default();
    let mut verb = name.to_ascii_lowercase();
    if let C::Policy { command } = c {
        verb = format!("policy {}", format!("{command:?}").split([' ', '{', '(']).next().unwrap_or_default().to_ascii_lowercase());
    }
    Some(verb)
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let conn = cli.conn;
    match cli.command {
        Command::Controller { config, check_config: true, insecure_control_plane } => {
            crate::check::print(crate::check::controller(&config, insecure_control_plane)?);
            Ok(())
        }
        Command::Controller { config, insecure_control_plane, .. } => {
            init_logging(false)?;
            let shutdown = crate::shutdown::listen();
            let cfg = palisade_controller::ControllerConfig::load(&config, insecure_control_plane)?;
            if insecure_control_plane {
                tracing::warn!(event = "insecure_control_plane", "the control plane is PLAIN TEXT without client authentication");
            }
            let (controller, etcd) = palisade_controller::Controller::from_config(&cfg).await.map_err(anyhow::Error::msg)?;
            let tls = match &cfg.tls {
                Some(t) => Some(palisade_plane::ControlTls::load(&t.cert, &t.key, &t.ca).context("controller TLS files")?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
            let handle = controller.serve(listener, tls, etcd).await;
            shutdown.wait().await;
            handle.stop();
            handle.join().await;
            Ok(())
        }
        Command::Nodes => crate::ops::nodes(&conn).await,
        Command::Stats { watch } => crate::ops::stats(&conn, watch).await,
        Command::Connections { user, node } => crate::ops::connections(&conn, user, node).await,
        Command::Policy { command } => crate::ops::policy(&conn, command).await,
        Command::Keys { command } => crate::ops::keys(&conn, command).await,
        Command::Revoke { target, issued_before, expires } => crate::ops::revoke(&conn, target, issued_before, expires).await,
        Command::Disconnect { target, node, code, reason } => crate::ops::disconnect(&conn, target, node, code, reason).await,
        Command::Send { target, data, node } => crate::ops::send(&conn, target, data, node).await,
        Command::Drain { node, deadline } => crate::ops::drain(&conn, node, deadline).await,
        Command::Events { follow, user, node, result, code, limit } => {
            crate::ops::events(&conn, crate::ops::EventsArgs { follow, user, node, result, code, limit }).await
        }
        Command::Node { config, check_config: true, insecure_control_plane } => {
            crate::check::print(crate::check::node(&config, insecure_control_plane)?);
            Ok(())
        }
        Command::Node { config, insecure_control_plane, .. } => {
            init_logging(false)?;
            let shutdown = crate::shutdown::listen();
            let mut cfg = palisade_node::NodeConfig::load_with(&config, insecure_control_plane)?;
            cfg.insecure_control_plane = insecure_control_plane;
            let node = palisade_node::Node::bind(cfg).await?;
            let handle = node.spawn().await;
            shutdown.wait().await;
            handle.drain().await;
            handle.join().await;
            Ok(())
        }
        Command::Dev { dir, nodes, etcd, upstream } => {
            init_logging(true)?;
            crate::dev::run(crate::dev::DevOptions { dir, nodes, etcd, upstream }).await
        }
        Command::Token { command } => match command {
            TokenCommand::Mint { key, sub, ttl, kid, alg, aud, iss, jti } => {
                let key_text = std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
                let token = crate::token::mint(&crate::token::MintArgs {
                    key_text: &key_text,
                    alg: alg.as_deref(),
                    kid: kid.as_deref(),
                    sub: &sub,
                    ttl_seconds: crate::token::parse_ttl(&ttl)?,
                    aud: aud.as_deref(),
                    iss: iss.as_deref(),
                    jti: jti.as_deref(),
                })?;
                println!("{token}");
                Ok(())
            }
            TokenCommand::Check { token, policy, route } => {
                let policy = match policy {
                    Some(p) => {
                        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                        Some(palisade_policy::Policy::from_yaml_or_json(&text)?)
                    }
                    None => None,
                };
                let out = crate::token::check(&token, policy.as_ref(), route.as_deref())?;
                println!("{}", serde_json::to_string_pretty(&out)?);
                if out.get("verification").is_some_and(|v| v != "valid") {
                    anyhow::bail!("token refused: {}", out["verification"]);
                }
                Ok(())
            }
        },
    }
}
