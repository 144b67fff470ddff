//! Server RSS per idle authenticated WSS connection (TLS in the process). Each round
//! starts fresh server processes (freed memory stays with the allocator, so a second
//! round in the same process would measure reuse), warms them up, reads VmRSS, opens
//! the sessions and leaves them idle, and reads VmRSS again. The bare servers are
//! context, not a bar. SPEC target: at most 12 KiB per connection at 15,000 connections.

use std::time::Duration;

use anyhow::bail;

use super::{Setup, banner, kinds, rotated};
use crate::MemoryArgs;
use crate::client::{handshake_burst, open_many};
use crate::proc::SETTLE;
use crate::report::{JsonLine, Series, Table, median, round};

pub const TARGET_KIB: f64 = 12.0;

pub async fn run(a: MemoryArgs) -> anyhow::Result<()> {
    let rounds = a.common.rounds.unwrap_or(3).max(1);
    let conns = a.connections.max(1);
    let concurrency = a.concurrency.max(1);
    super::check_open_files(conns as u64 + 256)?;
    let per_source = conns.div_ceil(a.common.sources.max(1) as usize);
    if per_source > 25_000 {
        bail!("{per_source} connections per source address is too close to the ~28k ephemeral ports: raise --sources");
    }
    let setup = Setup::new(&a.common, 256)?;
    let kinds = kinds(&a.common);
    banner(
        "memory",
        &setup,
        &[],
        &format!("{conns} idle sessions per round and server, concurrency {concurrency}, {rounds} rounds (fresh processes each round)"),
    );

    let mut table = Table::new(&["round", "server", "sessions", "RSS before KiB", "RSS idle KiB", "open s", "KiB/connection"]);
    let mut series: Vec<Series> = kinds.iter().map(|k| Series { server: k.name(), values: Vec::new() }).collect();
    let order: Vec<usize> = (0..kinds.len()).collect();
    for r in 0..rounds {
        for i in rotated(&order, r) {
            let server = setup.start(kinds[i]).await?;
            let warm = handshake_burst(&setup.client, server.addr, 200, concurrency.min(32)).await;
            if warm.unsuccessful() > 0 {
                bail!("{} warm-up: {}", server.name, warm.describe());
            }
            tokio::time::sleep(SETTLE * 2).await;
            let before = server.rss_kib()?;
            let (idle, opened) = open_many(&setup.client, server.addr, conns, concurrency, |ws| ws.into_idle(), false).await;
            if opened.unsuccessful() > 0 {
                bail!("{}: {} of {conns} sessions did not open: {}", server.name, opened.unsuccessful(), opened.describe());
            }
            tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
            let after = server.rss_kib()?;
            let kib = after.saturating_sub(before) as f64 / idle.len() as f64;
            series[i].values.push(kib);
            table.row(vec![
                (r + 1).to_string(),
                server.name.clone(),
                idle.len().to_string(),
                before.to_string(),
                after.to_string(),
                format!("{:.2}", opened.wall.as_secs_f64()),
                format!("{kib:.2}"),
            ]);
            server.stop();
            // Reset, not closed: no TIME_WAIT left on the client's ports.
            drop(idle);
        }
    }
    table.print();

    let palisade = median(&series[0].values);
    let baselines: Vec<(String, f64)> = series[1..].iter().map(|s| (s.server.clone(), median(&s.values))).collect();
    println!("summary (medians over {rounds} rounds):");
    let verdict = if palisade <= TARGET_KIB { "meets" } else { "MISSES" };
    println!("  palisade        {palisade:>7.2} KiB/connection  SPEC target <= {TARGET_KIB} KiB (at 15,000 connections): {verdict}");
    for (name, m) in &baselines {
        println!("  {name:<15} {m:>7.2} KiB/connection  (context) ratio palisade/{name} {:.2}", palisade / m);
    }
    let primary = baselines.iter().min_by(|a, b| a.1.total_cmp(&b.1)).cloned().unwrap_or_else(|| ("none".into(), f64::NAN));
    let mut json = JsonLine::default();
    json.set("scenario", "memory");
    json.set("palisade_kib", round(palisade, 2));
    json.set("baseline_kib", round(primary.1, 2));
    json.set("ratio", round(palisade / primary.1, 3));
    json.set("rounds", rounds);
    json.set("target_kib", TARGET_KIB);
    json.set("baseline", primary.0.clone());
    for (name, m) in &baselines {
        json.set(format!("{}_kib", name.replace('-', "_")), round(*m, 2));
    }
    json.set("connections", conns);
    json.set("failed", 0);
    json.set("command", crate::command_line());
    println!("{json}");
    Ok(())
}
