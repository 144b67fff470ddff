//! Server RSS per idle authenticated connection with TLS offloaded (SPEC section 12: at
//! most 4 KiB at 15,000 connections). The node runs with `[tls] mode = "offloaded"`: a
//! plain listener that accepts only trusted proxies (the loopback range here), and the
//! client plays the TLS-terminating load balancer: plain `ws://`, the same upgrade (Origin,
//! a fresh ES256 bearer token) plus `X-Forwarded-For`. As in `memory`, each round starts
//! fresh processes, warms them up, reads VmRSS, opens the sessions and leaves them idle,
//! waits, reads VmRSS again. The bare servers (`bare-server --plain`) are context.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::nodes::{NodeVariant, bare_plain, palisade, plain_client};
use super::{Setup, banner, rotated};
use crate::bare::Http;
use crate::client::{handshake_burst, open_many};
use crate::proc::{SETTLE, Server};
use crate::report::{JsonLine, Series, Table, median, round};
use crate::{BaselineChoice, Common};

pub const TARGET_KIB: f64 = 4.0;

#[derive(Args, Debug, Clone)]
pub struct OffloadArgs {
    /// Idle sessions held open (the SPEC figure is at 15,000; the open-file limit here is
    /// 20,000 per process).
    #[arg(long, default_value_t = 15000)]
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

#[derive(Clone, Copy)]
enum Which {
    Palisade,
    Bare(Http),
}

impl Which {
    fn name(self) -> String {
        match self {
            Which::Palisade => "palisade-offloaded".into(),
            Which::Bare(h) => format!("bare-{}-plain", h.name()),
        }
    }
}

/// (VmRSS, RssAnon) in KiB.
fn rss(s: &Server) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", s.pid()))?;
    let field =
        |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    Ok((s.rss_kib()?, field("RssAnon:").unwrap_or(0)))
}

pub async fn run(a: OffloadArgs) -> anyhow::Result<()> {
    if a.common.otel {
        bail!("--otel applies to `handshake` and `echo`");
    }
    let rounds = a.common.rounds.unwrap_or(3).max(1);
    let conns = a.connections.max(1);
    let concurrency = a.concurrency.max(1);
    super::check_open_files(conns as u64 + 256)?;
    let per_source = conns.div_ceil(a.common.sources.max(1) as usize);
    if per_source > 25_000 {
        bail!("{per_source} connections per source address is too close to the ~28k ephemeral ports: raise --sources");
    }
    let setup = Setup::new(&a.common, 256)?;
    let proxy = plain_client(&setup, a.common.sources, 256, true)?;
    let mut which = vec![Which::Palisade];
    match a.common.baseline {
        BaselineChoice::Hyper => which.push(Which::Bare(Http::Hyper)),
        BaselineChoice::Raw => which.push(Which::Bare(Http::Raw)),
        BaselineChoice::Both => which.extend([Which::Bare(Http::Hyper), Which::Bare(Http::Raw)]),
    }
    banner(
        "memory-offloaded",
        &setup,
        &[],
        &format!(
            "{conns} idle plain ws:// sessions per round and server (TLS offloaded), concurrency {concurrency}, {rounds} rounds (fresh processes each round)"
        ),
    );

    let mut table =
        Table::new(&["round", "server", "sessions", "RSS before KiB", "RSS idle KiB", "RssAnon growth KiB", "open s", "KiB/connection"]);
    let mut series: Vec<Series> = which.iter().map(|w| Series { server: w.name(), values: Vec::new() }).collect();
    let mut anon: Vec<Vec<f64>> = which.iter().map(|_| Vec::new()).collect();
    let order: Vec<usize> = (0..which.len()).collect();
    for r in 0..rounds {
        for i in rotated(&order, r) {
            let name = which[i].name();
            let server = match which[i] {
                Which::Palisade => palisade(&setup, &name, &NodeVariant::Offloaded, &proxy).await?,
                Which::Bare(h) => bare_plain(&setup, &name, h, &proxy).await?,
            };
            let warm = handshake_burst(&proxy, server.addr, 200, concurrency.min(32)).await;
            if warm.unsuccessful() > 0 {
                bail!("{} warm-up: {}", server.name, warm.describe());
            }
            tokio::time::sleep(SETTLE * 2).await;
            let before = rss(&server)?;
            let (idle, opened) = open_many(&proxy, server.addr, conns, concurrency, |ws| ws.into_idle(), false).await;
            if opened.unsuccessful() > 0 {
                bail!("{}: {} of {conns} sessions did not open: {}", server.name, opened.unsuccessful(), opened.describe());
            }
            tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
            let after = rss(&server)?;
            let kib = after.0.saturating_sub(before.0) as f64 / idle.len() as f64;
            series[i].values.push(kib);
            anon[i].push(after.1.saturating_sub(before.1) as f64 / idle.len() as f64);
            table.row(vec![
                (r + 1).to_string(),
                server.name.clone(),
                idle.len().to_string(),
                before.0.to_string(),
                after.0.to_string(),
                after.1.saturating_sub(before.1).to_string(),
                format!("{:.2}", opened.wall.as_secs_f64()),
                format!("{kib:.2}"),
            ]);
            server.stop();
            // Reset, not closed: no TIME_WAIT left on the client's ports.
            drop(idle);
        }
    }
    table.print();

    let palisade_kib = median(&series[0].values);
    let verdict = if palisade_kib <= TARGET_KIB { "meets" } else { "MISSES" };
    println!("summary (medians over {rounds} rounds):");
    println!(
        "  palisade-offloaded {palisade_kib:>7.2} KiB/connection (RssAnon {:.2})  SPEC target <= {TARGET_KIB} KiB (at 15,000 connections): {verdict}",
        median(&anon[0])
    );
    let mut json = JsonLine::default();
    json.set("scenario", "memory-offloaded");
    json.set("palisade_kib", round(palisade_kib, 2));
    json.set("palisade_anon_kib", round(median(&anon[0]), 2));
    for (s, an) in series[1..].iter().zip(&anon[1..]) {
        let m = median(&s.values);
        println!(
            "  {:<18} {m:>7.2} KiB/connection (RssAnon {:.2})  (context) ratio palisade/{} {:.2}",
            s.server,
            median(an),
            s.server,
            palisade_kib / m
        );
        json.set(format!("{}_kib", s.server.replace('-', "_")), round(m, 2));
    }
    json.set("rounds", rounds);
    json.set("target_kib", TARGET_KIB);
    json.set("connections", conns);
    json.set("failed", 0);
    json.set("command", crate::command_line());
    println!("{json}");
    Ok(())
}
