//! Server CPU per accepted WSS handshake: TCP connect, a full TLS 1.3 handshake (ECDSA
//! P-256 certificate, no resumption), the upgrade with Origin and an ES256 bearer token,
//! then the close handshake. SPEC target: palisade at most 1.25x the bare baseline.
//!
//! A round gives every server `handshakes`, in `slices` interleaved passes (palisade,
//! baseline, baseline, palisade, ...), so that the machine's drifting noise falls on all
//! servers alike; the per-round ratio compares servers measured over the same seconds.

use anyhow::bail;

use super::{Setup, Tally, banner, kinds, rotated, summarize};
use crate::HandshakeArgs;
use crate::client::handshake_burst;
use crate::proc::{SETTLE, Server};
use crate::report::Table;

pub const TARGET: f64 = 1.25;

pub async fn run(a: HandshakeArgs) -> anyhow::Result<()> {
    let rounds = a.common.rounds.unwrap_or(5).max(1);
    let n = a.handshakes.max(1);
    let slices = a.common.slices.clamp(1, n);
    let concurrency = a.concurrency.max(1);
    super::check_open_files(concurrency as u64 * 2 + 256)?;
    let mut kinds = kinds(&a.common);
    if a.no_cache_too {
        kinds.insert(1, super::Kind::PalisadeNoCache);
    }
    let warmup = a.warmup.unwrap_or((n / 10).max(100));
    let setup = Setup::new(&a.common, tokens(&a, kinds.len(), warmup, n, rounds))?;
    let mut servers = Vec::new();
    for k in &kinds {
        servers.push(setup.start(*k).await?);
    }
    banner(
        "handshake",
        &setup,
        &servers,
        &format!(
            "{n} handshakes per round and server in {slices} interleaved slices, concurrency {concurrency}, {rounds} rounds, {} source addresses, {}",
            a.common.sources,
            if a.reconnect {
                "reconnects (256 tokens in turn: palisade's token cache answers)"
            } else {
                "a fresh token for every handshake"
            }
        ),
    );

    let Measured { table, tallies, first_problem } = measure(&setup, &servers, warmup, n, slices, concurrency, rounds).await?;
    for s in servers {
        s.stop();
    }
    table.print();

    let names: Vec<String> = kinds.iter().map(|k| k.name()).collect();
    let failed: usize = tallies.iter().flatten().map(|t| t.refused + t.failed).sum();
    let mut json = summarize("handshake", "handshake", 1, &names, &tallies, TARGET);
    if let Some(c) = json.get_f64("palisade_us") {
        println!("  palisade: {:.0} accepted handshakes per server CPU second", 1e6 / c);
    }
    println!("  refused or failed handshakes: {failed}");
    // Context: how the budget of the bar compares with the one check that must cost.
    if let (Some(b), Ok(v)) = (json.get_f64("baseline_us"), crate::fixture::es256_verify_us(&setup.fixture)) {
        println!(
            "  context: the {TARGET}x budget allows {:.1} us/handshake over the baseline; one ES256 verification by palisade_policy costs {v:.1} us (wall, this process)",
            b * (TARGET - 1.0)
        );
        json.set("es256_verify_us", crate::report::round(v, 1));
    }
    json.set("tokens", if a.reconnect { "reconnect" } else { "fresh" });
    json.set("handshakes", n);
    json.set("slices", slices);
    json.set("concurrency", concurrency);
    json.set("failed", failed);
    json.set("command", crate::command_line());
    println!("{json}");
    if let Some(p) = first_problem {
        bail!("{failed} handshakes were refused or failed (first: {p})");
    }
    Ok(())
}

/// Tokens to mint: one per handshake of the whole run (SPEC: a fresh ES256 JWT every
/// handshake), or 256 reused for `--reconnect`.
pub fn tokens(a: &HandshakeArgs, servers: usize, warmup: usize, n: usize, rounds: usize) -> usize {
    if a.reconnect { 256 } else { servers * (warmup + n * rounds) + 64 }
}

/// What [`measure`] gives: the per-round table, `tallies[round][server]`, and the first
/// refusal or failure seen.
pub struct Measured {
    pub table: Table,
    pub tallies: Vec<Vec<Tally>>,
    pub first_problem: Option<String>,
}

/// Warms every server up with `warmup` handshakes, then runs `rounds` rounds of `n`
/// handshakes per server in `slices` interleaved passes, reading each server's CPU time
/// around each pass.
pub async fn measure(
    setup: &Setup,
    servers: &[Server],
    warmup: usize,
    n: usize,
    slices: usize,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<Measured> {
    for s in servers {
        let o = handshake_burst(&setup.client, s.addr, warmup, concurrency).await;
        if o.unsuccessful() > 0 {
            bail!("{} warm-up: {}", s.name, o.describe());
        }
    }
    let mut table =
        Table::new(&["round", "server", "accepted", "refused", "failed", "wall s", "handshakes/s", "server CPU s", "us/handshake"]);
    let mut tallies: Vec<Vec<Tally>> = Vec::new();
    let mut first_problem = None;
    let order: Vec<usize> = (0..servers.len()).collect();
    for r in 0..rounds {
        let mut round: Vec<Tally> = servers.iter().map(|_| Tally::default()).collect();
        for slice in 0..slices {
            let share = n / slices + usize::from(slice < n % slices);
            for i in rotated(&order, r * slices + slice) {
                let s = &servers[i];
                let before = s.cpu()?;
                let o = handshake_burst(&setup.client, s.addr, share, concurrency).await;
                tokio::time::sleep(SETTLE).await;
                let cpu = s.cpu()?.since(&before, setup.ticks_per_second);
                let t = &mut round[i];
                t.add_cpu(&cpu);
                t.ops += o.accepted;
                t.wall += o.wall;
                t.refused += o.refused;
                t.failed += o.failed + o.close_errors;
                if o.unsuccessful() + o.close_errors > 0 && first_problem.is_none() {
                    first_problem = Some(format!("{}: {} ({} close errors)", s.name, o.describe(), o.close_errors));
                }
            }
        }
        for (i, t) in round.iter().enumerate() {
            table.row(vec![
                (r + 1).to_string(),
                servers[i].name.clone(),
                t.ops.to_string(),
                t.refused.to_string(),
                t.failed.to_string(),
                format!("{:.2}", t.wall.as_secs_f64()),
                format!("{:.0}", t.ops as f64 / t.wall.as_secs_f64()),
                format!("{:.3}", t.cpu_s),
                format!("{:.1}", t.us_per_op()),
            ]);
        }
        tallies.push(round);
    }
    Ok(Measured { table, tallies, first_problem })
}
