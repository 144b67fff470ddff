//! Soak: a real `palisade node` under churn for minutes (sessions opening and closing at
//! fixed rates, messages echoed, refusals mixed in: forged and expired tokens, a foreign
//! Origin, rate-limited bursts, stalled sockets), then a cool-down with every client
//! connection closed. Every second: the node's RSS, open descriptors, live sessions and
//! the handshake latency, to `samples.csv` and one SVG chart per series. The run passes
//! when the lines are flat at the end: descriptors back to the idle baseline, RSS not
//! growing and not above the churn's peak, no session left, no unexpected error.

mod chart;
mod load;
mod node;
mod sample;
mod summary;
mod verdict;
mod wire;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use palisade_policy::mint::SigningKey;

use self::load::{Load, Minter, Plan, Stats};
use self::sample::{CSV_HEADER, Probe};
use self::summary::{default_out, summarize};
use super::{Setup, banner};
use crate::{BaselineChoice, Common};

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Churn duration in minutes.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Churn duration in seconds, instead of --minutes (quick runs).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Cool-down after the churn, every client connection closed, in seconds: the pass
    /// condition is checked on its end.
    #[arg(long, default_value_t = 60)]
    pub cooldown: u64,
    /// Idle seconds before the churn: the descriptor and RSS baseline.
    #[arg(long, default_value_t = 10)]
    pub idle: u64,
    /// Sessions opened per second (each a fresh ES256 token for one of --subjects).
    #[arg(long, default_value_t = 115.0)]
    pub rate: f64,
    /// A session lives a random time between these, in seconds.
    #[arg(long, default_value_t = 5)]
    pub min_life: u64,
    #[arg(long, default_value_t = 30)]
    pub max_life: u64,
    /// Each session echoes one message this often.
    #[arg(long, default_value_t = 1000)]
    pub message_interval_ms: u64,
    /// Text message size in bytes (at most 125).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Distinct subjects of the churn's tokens, used in turn.
    #[arg(long, default_value_t = 10_000)]
    pub subjects: usize,
    /// Handshakes per second with a bad token (forged signature, or expired): 403.
    #[arg(long, default_value_t = 2.0)]
    pub bad_token_rate: f64,
    /// Handshakes per second from a foreign Origin: 403.
    #[arg(long, default_value_t = 2.0)]
    pub bad_origin_rate: f64,
    /// Every this many seconds, --burst-size handshakes at once for one subject: the
    /// per-user handshake rate (2/s, burst 5) answers 429.
    #[arg(long, default_value_t = 5)]
    pub burst_every: u64,
    #[arg(long, default_value_t = 20)]
    pub burst_size: usize,
    /// Every this many seconds, a burst from one source address (127.0.0.200): the per-IP
    /// handshake rate answers 429 (default size: twice the per-IP burst).
    #[arg(long, default_value_t = 30)]
    pub ip_burst_every: u64,
    #[arg(long)]
    pub ip_burst_size: Option<usize>,
    /// Stalled sockets per second (from 127.0.0.201; TCP only, a ClientHello only, or half a
    /// request head), each held until the node closes it.
    #[arg(long, default_value_t = 10.0)]
    pub stall_rate: f64,
    /// The policy's handshake timeout (stalled sockets must be closed within it plus 2 s).
    #[arg(long, default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// Client source addresses of the churn: 127.0.0.2, 127.0.0.3, ...
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Descriptors allowed above the idle baseline at the end.
    #[arg(long, default_value_t = 16)]
    pub fd_slack: u64,
    /// Largest RSS slope allowed over the last 30 s of the cool-down, KiB per second.
    #[arg(long, default_value_t = 8.0)]
    pub rss_slope_kib: f64,
    /// Output directory (default: target/soak/<UTC date-time> of this workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The palisade binary (default: target/release/palisade of this workspace).
    #[arg(long)]
    pub palisade_bin: Option<PathBuf>,
    /// Keep the temporary directory (certificates, configs, the node's log) and print its path.
    #[arg(long)]
    pub keep_files: bool,
}

pub(crate) const KID: &str = "soak";
const BURST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 200);
const STALL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 201);

pub async fn run(a: SoakArgs) -> anyhow::Result<()> {
    let churn = a.seconds.unwrap_or(a.minutes * 60).max(1);
    anyhow::ensure!(churn <= 100 * 60, "at most 100 minutes (the tokens are minted for an hour; the run's own key is fresh)");
    anyhow::ensure!(a.size <= 125, "--size is at most 125");
    anyhow::ensure!((1..=150).contains(&a.sources), "--sources must be 1..=150 (127.0.0.200 and .201 are the burst and stall addresses)");
    super::check_open_files((a.rate * a.max_life as f64) as u64 * 2 + a.stall_rate as u64 * 20 + 1024)?;
    let common = Common {
        rounds: None,
        slices: 1,
        baseline: BaselineChoice::Both,
        sources: a.sources,
        palisade_bin: a.palisade_bin.clone(),
        keep_files: a.keep_files,
        otel: false,
    };
    let setup = Setup::new(&common, 1)?;
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let minter = Arc::new(Minter { key: SigningKey::from_text(&signing.serialize_pem(), Some("ES256"))?, kid: KID.into() });

    let node = node::start(&a, &setup, &minter, signing.public_key_pem()).await?;
    let (mut server, wire, control, log) = (node.server, node.wire, node.control, node.log);
    let (ip_rate, ip_burst, ip_burst_size) = (node.ip_rate, node.ip_burst, node.ip_burst_size);
    let sources: Vec<Ipv4Addr> = (0..a.sources).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();

    let live = a.rate * (a.min_life + a.max_life) as f64 / 2.0;
    banner(
        "soak",
        &setup,
        std::slice::from_ref(&server),
        &format!(
            "{churn} s of churn ({} sessions/s living {}-{} s: ~{live:.0} live, a {}-byte message every {} ms each), {} s cool-down",
            a.rate, a.min_life, a.max_life, a.size, a.message_interval_ms, a.cooldown
        ),
    );
    println!(
        "  refusals: bad token {}/s, foreign Origin {}/s, a {}-handshake burst for one subject every {} s (per-user 2/s, burst 5), \
         a {ip_burst_size}-handshake burst from {BURST_IP} every {} s (per-IP {ip_rate}/s, burst {ip_burst}), {} stalled sockets/s from {STALL_IP} \
         (handshake timeout {} ms)",
        a.bad_token_rate, a.bad_origin_rate, a.burst_size, a.burst_every, a.ip_burst_every, a.stall_rate, a.handshake_timeout_ms
    );
    let timeout = Duration::from_millis(a.handshake_timeout_ms);
    let plan = Plan {
        rate: a.rate,
        min_life: Duration::from_secs(a.min_life),
        max_life: Duration::from_secs(a.max_life.max(a.min_life)),
        message_interval: Duration::from_millis(a.message_interval_ms.max(1)),
        size: a.size,
        subjects: a.subjects,
        bad_token_rate: a.bad_token_rate,
        bad_origin_rate: a.bad_origin_rate,
        burst_every: Duration::from_secs(a.burst_every),
        burst_size: a.burst_size,
        ip_burst_every: Duration::from_secs(a.ip_burst_every),
        ip_burst_size,
        stall_rate: a.stall_rate,
        stall_max_wait: timeout + Duration::from_secs(5),
        stall_late: timeout + Duration::from_secs(2),
        sources,
        burst_ip: BURST_IP,
        stall_ip: STALL_IP,
    };
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = Arc::new(Load { wire, minter, plan, stats: stats.clone(), stop });

    let out = a.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut probe = Probe::new(server.pid(), setup.ticks_per_second, control);
    let (idle, churn_end) = (a.idle as f64, (a.idle + churn) as f64);
    let end = churn_end + a.cooldown as f64;
    let mut csv = format!("{CSV_HEADER}\n");
    let mut samples = Vec::new();
    let mut died = None;
    let mut started_load = false;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    println!(
        "  {:>6} {:<8} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "t s", "phase", "RSS KiB", "fds", "node ses", "client", "stalled", "p50 ms", "p99 ms", "unexpected"
    );
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let phase = if t < idle {
            "idle"
        } else if t < churn_end {
            "churn"
        } else {
            "cooldown"
        };
        if phase == "churn" && !started_load {
            load::start(load.clone());
            started_load = true;
        }
        if phase == "cooldown" && !*stop_tx.borrow() {
            let _ = stop_tx.send(true);
        }
        if let Err(e) = server.check_alive() {
            died = Some(format!("{e:#}"));
            break;
        }
        let s = probe.sample(t, phase, &stats).await?;
        csv.push_str(&s.csv());
        csv.push('\n');
        let every = if churn + a.cooldown > 300 { 15 } else { 5 };
        if samples.len() % every == 0 || t + 1.0 >= end {
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            println!(
                "  {:>6.0} {:<8} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
                s.t,
                s.phase,
                s.rss_kib,
                s.fds,
                s.node_sessions.map_or("-".into(), |v| v.to_string()),
                s.client_sessions,
                s.stalled,
                ms(s.p50_ms),
                ms(s.p99_ms),
                s.unexpected
            );
        }
        samples.push(s);
        if t >= end {
            break;
        }
    }
    let _ = stop_tx.send(true);
    summarize(&a, churn, &out, &csv, &samples, &stats, &probe, died, &log)
}
