#![forbid(unsafe_code)]
//! Palisade's benchmark harness: the quality bars of SPEC section 12, each measured as a
//! ratio against a bare baseline server run in the same invocation on the same machine.
//!
//! Every scenario spawns real server processes (a `palisade node` and the bare baselines
//! of `bare-server`), drives them from this process over loopback WSS, and reads the
//! servers' CPU time and RSS from `/proc`. Medians of several rounds; never a timed test.

mod bare;
mod client;
mod fixture;
mod proc;
mod report;
mod scenario;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "palisade-bench", about = "SPEC section 12 quality bars, as ratios against bare baselines run in the same invocation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every data-path bar of SPEC section 12 and every peer in one run (within 15 minutes
    /// here): each scenario in turn, then one table of them all.
    Bars(scenario::bars::BarsArgs),
    /// Server CPU per accepted WSS handshake (TLS 1.3, ECDSA P-256, ES256 JWT, Origin, limits).
    Handshake(HandshakeArgs),
    /// Server CPU per echoed message in an authenticated session.
    Echo(EchoArgs),
    /// Server RSS per idle authenticated WSS connection.
    Memory(MemoryArgs),
    /// Handshakes per server CPU second: palisade against the reference Node.js design
    /// (npm `ws` + `jsonwebtoken` behind node:https).
    NodeReference(HandshakeArgs),
    /// Server RSS per idle authenticated connection with TLS offloaded (plain ws://).
    MemoryOffloaded(scenario::offload::OffloadArgs),
    /// Round-trip latency added by the upstream bridge at a fixed message rate.
    Bridge(scenario::bridge::BridgeArgs),
    /// The fleet bars: push and disconnect on 20 node processes, a push to 1,000 simulated nodes.
    Fleet(scenario::fleet::FleetArgs),
    /// CPU of one ES256 verification: palisade's verifier against jsonwebtoken alone.
    Verify(scenario::verify::VerifyArgs),
    /// Envoy, HAProxy and nginx + njs side by side with palisade, each bridging the same
    /// authenticated WSS upgrade to the same upstream: CPU per handshake and message, RSS
    /// per idle connection, latency.
    Peers(scenario::peers::PeersArgs),
    /// Many real nodes in one process (spawned by `fleet`).
    FleetSim(scenario::fleet::sim::SimArgs),
    /// Minutes of churn and refusals against a node, then a cool-down: RSS, descriptors,
    /// live sessions and handshake latency every second must end flat.
    Soak(scenario::soak::SoakArgs),
    /// The baseline: bare rustls + fastwebsockets upgrade and echo, no checks (spawned by
    /// the scenarios as a separate process).
    BareServer(bare::BareArgs),
}

/// Which bare server(s) to run as the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BaselineChoice {
    /// hyper 1 `serve_connection(..).with_upgrades()` + `fastwebsockets::upgrade::upgrade`.
    Hyper,
    /// The request head read by hand (httparse), then `WebSocket::after_handshake` on the TLS stream.
    Raw,
    /// Both; the ratio is reported against the cheaper one (the stricter bar).
    Both,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Measured rounds per server; the report gives medians.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Each round is run in this many interleaved passes over the servers (handshake and
    /// echo), so that the machine's drifting noise is shared by all of them.
    #[arg(long, default_value_t = 4)]
    pub slices: usize,
    /// Baseline server(s).
    #[arg(long, value_enum, default_value_t = BaselineChoice::Both)]
    pub baseline: BaselineChoice,
    /// Client source addresses 127.0.0.2, 127.0.0.3, ... (each has ~28k ephemeral ports).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// The palisade binary (default: target/release/palisade of this workspace).
    #[arg(long)]
    pub palisade_bin: Option<PathBuf>,
    /// Keep the temporary directory (certificates, configs, server logs) and print its path.
    #[arg(long)]
    pub keep_files: bool,
    /// Telemetry cost instead of the bar: a node exporting traces, metrics and logs over
    /// OTLP/gRPC to a real receiver (`tests/otlp_receiver.py`: Python, opentelemetry-proto
    /// and grpcio) against the same node with export off; the ratio is on / off
    /// (handshake, echo). The baselines are not run.
    #[arg(long)]
    pub otel: bool,
}

#[derive(Args, Debug, Clone)]
pub struct HandshakeArgs {
    /// Handshakes per round and server.
    #[arg(long, default_value_t = 2000)]
    pub handshakes: usize,
    /// Concurrent client handshakes.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Unmeasured handshakes per server before the first round (default: a tenth, at least 100).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Reconnects: the clients take turns with 256 tokens, so palisade's cache of verified
    /// tokens answers (`auth.token_cache`). Without it every handshake has a fresh token.
    #[arg(long)]
    pub reconnect: bool,
    /// Also runs a palisade with the token cache off (`palisade-no-cache`), interleaved
    /// with the others: what the cache costs (fresh tokens) or saves (`--reconnect`).
    #[arg(long)]
    pub no_cache_too: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// Sessions per round.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Messages echoed per session and round.
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Messages in flight per session (written as one batch, then all echoes awaited).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Text message size in bytes (at most 125: one-byte frame length).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Idle sessions held open (15000 for the SPEC figure).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Concurrent client handshakes while opening them.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to wait after the last connection before reading RSS, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    #[command(flatten)]
    pub common: Common,
}

fn main() -> std::process::ExitCode {
    // One crypto provider for the whole process: aws-lc-rs (never ring).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::BareServer(a) => bare::run(a),
        Cmd::Bars(a) => scenario::bars::run(a),
        Cmd::Handshake(a) => with_runtime(|| scenario::handshake::run(a)),
        Cmd::Echo(a) => with_runtime(|| scenario::echo::run(a)),
        Cmd::Memory(a) => with_runtime(|| scenario::memory::run(a)),
        Cmd::NodeReference(a) => with_runtime(|| scenario::reference::run(a)),
        Cmd::MemoryOffloaded(a) => with_runtime(|| scenario::offload::run(a)),
        Cmd::Bridge(a) => with_runtime(|| scenario::bridge::run(a)),
        Cmd::Peers(a) => with_runtime(|| scenario::peers::run(a)),
        Cmd::Soak(a) => with_runtime(|| scenario::soak::run(a)),
        Cmd::Fleet(a) => with_runtime(|| scenario::fleet::run(a)),
        Cmd::Verify(a) => scenario::verify::run(a),
        Cmd::FleetSim(a) => with_runtime(|| scenario::fleet::sim::run(a)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs a scenario on a multi-threaded runtime; Ctrl-C ends it early, and the servers it
/// spawned are killed as its future is dropped.
fn with_runtime<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        tokio::select! {
            r = f() => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })
}

/// The command line as it can be pasted again.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo run --release -p palisade-bench -- {}", args.join(" "))
}
