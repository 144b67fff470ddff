//! Peers side by side with palisade, each doing the job of a node's `/echo` route bridged
//! to the same plain upstream echo server (`bare-server --http raw --plain`): TLS 1.3 with
//! the same ECDSA P-256 certificate, the Origin checked, the ES256 bearer JWT verified at
//! the upgrade, then the WebSocket relayed. Envoy, HAProxy and nginx + njs are found on
//! PATH (`scripts/install-peers.sh` installs them), their configurations generated into
//! the temporary directory ([`config`]). A peer that is missing or does not start is
//! skipped with the reason; one that refuses a valid handshake fails the run.
//!
//! Every round, in interleaved slices over all servers: server CPU per authenticated
//! bridged handshake (connect, TLS, upgrade through to the upstream, close handshake),
//! server CPU per echoed 64-byte message through the bridge, and round trips of paced
//! messages (p50, p99). After the rounds, RSS growth per idle bridged connection. Server
//! CPU and RSS are the palisade node's or the peer's own process tree (nginx: master and
//! workers), never the upstream's. Ratios are palisade / peer: below 1, palisade is cheaper.

mod config;
mod report;
mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::nodes::{NodeVariant, bare_plain, palisade, plain_client};
use super::{Setup, Tally, rotated};
use crate::Common;
use crate::bare::Http;
use crate::client::{Wss, close_all, handshake_burst, masked_frame, open_many};
use crate::proc::SETTLE;
use config::PeerKind;
use target::Target;

#[derive(Args, Debug, Clone)]
pub struct PeersArgs {
    /// Handshakes per round and server.
    #[arg(long, default_value_t = 1000)]
    pub handshakes: usize,
    /// Concurrent client handshakes.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Echo sessions per server and round.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
    /// Messages echoed per session and round.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Messages in flight per echo session.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Paced messages per second per server for the latency (over 2 sessions).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds of paced messages per server and round.
    #[arg(long, default_value_t = 2)]
    pub latency_seconds: u64,
    /// Idle bridged connections per server for the RSS figure.
    #[arg(long, default_value_t = 2000)]
    pub idle: usize,
    /// Peers to run (default all): envoy, haproxy, nginx.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

const SIZE: usize = 64;

/// One round's figures of one server.
#[derive(Default)]
pub struct Round {
    pub handshake: Tally,
    pub message: Tally,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub async fn run(a: PeersArgs) -> anyhow::Result<()> {
    if a.common.otel {
        bail!("--otel applies to `handshake` and `echo`");
    }
    let rounds = a.common.rounds.unwrap_or(3).max(1);
    let slices = a.common.slices.clamp(1, a.handshakes.max(1));
    let concurrency = a.concurrency.max(1);
    let peers_wanted = PeerKind::ALL.len() as u64 + 1;
    super::check_open_files((a.idle as u64 + a.connections as u64) * 2 * peers_wanted + 512)?;
    // A fresh token for every connection of the run (warm-up, handshakes, sessions, idle).
    let per_server = 100 + (a.handshakes + a.connections + 4) * rounds + a.idle + 64;
    let setup = Setup::new(&a.common, per_server * peers_wanted as usize)?;
    let plain = plain_client(&setup, a.common.sources, 1, false)?;
    let upstream = bare_plain(&setup, "upstream", Http::Raw, &plain).await?;
    let url = format!("ws://127.0.0.1:{}{}", upstream.addr.port(), crate::fixture::PATH);
    let node = palisade(&setup, "palisade", &NodeVariant::Upstream(url.clone()), &setup.client).await?;
    let mut targets = vec![Target {
        name: "palisade".into(),
        checks: "the node's gate: ES256 (signature, exp, ...), Origin allow-list, limits, audit record".into(),
        version: format!("palisade {}", setup.palisade_bin.display()),
        server: node,
    }];
    let mut skipped: Vec<(String, String)> = Vec::new();
    for kind in PeerKind::ALL {
        if !a.only.is_empty() && !a.only.iter().any(|o| kind.name().starts_with(o.as_str())) {
            continue;
        }
        match start_peer(&setup, kind, upstream.addr).await {
            Ok(Some(t)) => targets.push(t),
            Ok(None) => {}
            Err(Skip::Skipped(why)) => {
                println!("  skipped {}: {why}", kind.name());
                skipped.push((kind.name().into(), why));
            }
            Err(Skip::Failed(e)) => return Err(e),
        }
    }
    println!("palisade-bench peers: every server bridged to {url}");
    println!("  machine: {} CPUs, CLK_TCK {}; command: {}", crate::proc::cpus(), setup.ticks_per_second, crate::command_line());
    println!(
        "  {} handshakes (concurrency {concurrency}), {} sessions x {} messages of {SIZE} bytes (window {}), {} msg/s paced for {} s, per server and round in {slices} slices; {rounds} rounds; then {} idle connections",
        a.handshakes, a.connections, a.messages, a.window, a.rate, a.latency_seconds, a.idle
    );
    for t in &targets {
        println!("  server {:<10} pids {:?} {} ({}): {}", t.name, t.pids(), t.server.addr, t.version, t.checks);
    }
    for (name, why) in &skipped {
        println!("  server {name:<10} skipped: {why}");
    }

    // Every server must refuse a forged signature (the same token, its signature's first
    // character changed): what is measured is a checked token.
    let forged = forged_client(&setup, a.common.sources)?;
    for t in &targets {
        match forged.open(t.server.addr).await {
            Err(crate::client::Failure::Refused(s)) => println!("  {}: a forged token is refused with HTTP {s}", t.name),
            Ok(_) => bail!("{} accepted a forged token: its configuration does not check the signature", t.name),
            Err(e) => bail!("{}: the forged-token probe failed: {e}", t.name),
        }
    }
    // Warm-up: handshakes on every server.
    for t in &targets {
        let o = handshake_burst(&setup.client, t.server.addr, 100, concurrency).await;
        if o.unsuccessful() + o.close_errors > 0 {
            bail!("{} warm-up refused or failed valid handshakes: {}", t.name, o.describe());
        }
    }
    let mut problems: Vec<String> = Vec::new();
    let mut all: Vec<Vec<Round>> = Vec::new();
    let order: Vec<usize> = (0..targets.len()).collect();
    let payload: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| b'a' + (i % 26) as u8).collect());
    for r in 0..rounds {
        let mut round: Vec<Round> = targets.iter().map(|_| Round::default()).collect();
        // Handshakes.
        for slice in 0..slices {
            let share = a.handshakes / slices + usize::from(slice < a.handshakes % slices);
            for i in rotated(&order, r * slices + slice) {
                let t = &targets[i];
                let before = t.cpu()?;
                let o = handshake_burst(&setup.client, t.server.addr, share, concurrency).await;
                tokio::time::sleep(SETTLE).await;
                let h = &mut round[i].handshake;
                h.add_cpu(&t.cpu()?.since(&before, setup.ticks_per_second));
                h.ops += o.accepted;
                h.wall += o.wall;
                h.refused += o.refused;
                h.failed += o.failed + o.close_errors;
                if o.unsuccessful() + o.close_errors > 0 {
                    problems.push(format!("{} handshakes: {} ({} close errors)", t.name, o.describe(), o.close_errors));
                }
            }
        }
        // Echoed messages through the bridge.
        let mut sessions: Vec<Vec<Wss>> = Vec::new();
        for t in &targets {
            let (opened, o) = open_many(&setup.client, t.server.addr, a.connections, 16, |ws| ws, false).await;
            if o.unsuccessful() > 0 {
                bail!("{}: opening the echo sessions: {}", t.name, o.describe());
            }
            sessions.push(opened);
        }
        tokio::time::sleep(SETTLE).await;
        for slice in 0..slices {
            let share = a.messages / slices + usize::from(slice < a.messages % slices);
            for i in rotated(&order, r * slices + slice) {
                let t = &targets[i];
                let before = t.cpu()?;
                let started = Instant::now();
                let tasks: Vec<_> = std::mem::take(&mut sessions[i])
                    .into_iter()
                    .map(|mut ws| {
                        let (payload, window) = (payload.clone(), a.window);
                        tokio::spawn(async move {
                            let frame = masked_frame(0x1, &payload);
                            let res = ws.echo(share, window, &frame, &payload).await;
                            (ws, res)
                        })
                    })
                    .collect();
                let m = &mut round[i].message;
                for task in tasks {
                    match task.await {
                        Ok((ws, Ok(n))) => {
                            m.ops += n;
                            sessions[i].push(ws);
                        }
                        Ok((_, Err(e))) => problems.push(format!("{} echo: {e}", t.name)),
                        Err(e) => problems.push(format!("{} echo task: {e}", t.name)),
                    }
                }
                m.wall += started.elapsed();
                tokio::time::sleep(SETTLE).await;
                m.add_cpu(&t.cpu()?.since(&before, setup.ticks_per_second));
            }
        }
        // Latency: paced round trips on two of the open sessions per server.
        let gap = Duration::from_secs(1) / a.rate.max(1);
        let per_session = (u64::from(a.rate.max(1)) * a.latency_seconds.max(1) / 2).max(1) as usize;
        for i in rotated(&order, r) {
            let start = tokio::time::Instant::now() + Duration::from_millis(20);
            let mut rtts = Vec::new();
            let k = 2.min(sessions[i].len());
            let tasks: Vec<_> = sessions[i]
                .drain(..k)
                .enumerate()
                .map(|(j, mut ws)| {
                    tokio::spawn(async move {
                        let res = ws.paced(start + gap * j as u32, gap * 2, per_session, SIZE).await;
                        (ws, res)
                    })
                })
                .collect();
            for task in tasks {
                match task.await {
                    Ok((ws, Ok(v))) => {
                        rtts.extend(v);
                        sessions[i].push(ws);
                    }
                    Ok((_, Err(e))) => problems.push(format!("{} paced: {e}", targets[i].name)),
                    Err(e) => problems.push(format!("{} paced task: {e}", targets[i].name)),
                }
            }
            rtts.sort();
            round[i].p50_us = report::quantile_us(&rtts, 0.5);
            round[i].p99_us = report::quantile_us(&rtts, 0.99);
        }
        for (i, open) in sessions.into_iter().enumerate() {
            let errors = close_all(open, 16).await;
            if errors > 0 {
                problems.push(format!("{}: {errors} close handshakes did not end cleanly", targets[i].name));
            }
        }
        all.push(round);
    }

    // RSS per idle bridged connection.
    let mut rss = Vec::new();
    for t in &targets {
        tokio::time::sleep(SETTLE).await;
        let before = t.rss_kib();
        let (idle, o) = open_many(&setup.client, t.server.addr, a.idle, 32, |ws| ws.into_idle(), false).await;
        if o.unsuccessful() > 0 {
            problems.push(format!("{} idle sessions: {}", t.name, o.describe()));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let after = t.rss_kib();
        rss.push(after.saturating_sub(before) as f64 / idle.len().max(1) as f64);
        drop(idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let versions: Vec<String> = targets.iter().map(|t| t.version.clone()).collect();
    drop(targets);
    drop(upstream);
    let json = report::summary(&all, &names, &versions, &rss, &skipped, &a, problems.len());
    println!("{json}");
    if let Some(p) = problems.first() {
        bail!("{} problems (first: {p})", problems.len());
    }
    Ok(())
}

/// A client whose one token has a broken signature.
fn forged_client(setup: &Setup, sources: u8) -> anyhow::Result<Arc<crate::client::Client>> {
    let good = setup.fixture.bearer_tokens(1)?.remove(0);
    let (head, sig) = good.rsplit_once('.').ok_or_else(|| anyhow::anyhow!("a token without a signature"))?;
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let bad = format!("{head}.{first}{}", &sig[1..]);
    crate::client::Client::new(&setup.fixture.ca_pem, sources, vec![bad])
}

enum Skip {
    Skipped(String),
    Failed(anyhow::Error),
}

/// Starts a peer: skipped when not installed or when it does not come up; a failure of
/// the run when it is up but refuses a valid handshake.
async fn start_peer(setup: &Setup, kind: PeerKind, upstream: std::net::SocketAddr) -> Result<Option<Target>, Skip> {
    let (bin, version) = config::find(kind).map_err(Skip::Skipped)?;
    let port = crate::proc::free_port().map_err(Skip::Failed)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = config::spawn(setup, kind, &bin, addr, upstream).map_err(Skip::Failed)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Err(e) = server.check_alive() {
            return Err(Skip::Skipped(format!("did not start: {e:#}")));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Skip::Skipped(format!("not listening after 20 s (log: {})", server.log.display())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log.clone();
    let server = setup
        .ready(server, &setup.client)
        .await
        .map_err(|e| Skip::Failed(e.context(format!("{} is up but refuses valid handshakes (log: {})", kind.name(), log.display()))))?;
    Ok(Some(Target { name: kind.name().into(), checks: kind.checks().into(), version, server }))
}
