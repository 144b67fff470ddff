//! The latency the upstream bridge adds (SPEC section 12: p50 at most 60 us and p99 at most
//! 500 us on loopback at 1,000 msg/s). Three paths carry the same paced traffic, in
//! interleaved slices of every round:
//!
//! - `palisade`: the client over WSS to a `palisade node` whose `/echo` route is bridged to
//!   a plain `ws://` upstream echo server (`bare-server --http raw --plain`);
//! - `direct-wss`: the same TLS client straight to the same echo server code with TLS in
//!   it (`bare-server --http raw`): the headline baseline, since both paths then pay for
//!   the client's TLS and one TLS termination, and the difference is what the bridge adds
//!   (the node's relay and its plain hop to the upstream);
//! - `direct-ws`: a plain client straight to the upstream that palisade bridges to
//!   (context: the added figure then also counts TLS).
//!
//! Each message's round trip runs from just before its write to the parse of its echo.
//! Per path, the CPU time of the server the client talks to and the number of times its
//! threads were scheduled in are read around every slice (`/proc/<pid>/task/*/schedstat`), per message: the
//! wake-ups a round trip costs are where an idle machine's latency goes.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::nodes::{NodeVariant, bare_plain, palisade, plain_client};
use super::{Kind, Setup, banner, rotated};
use crate::Common;
use crate::bare::Http;
use crate::client::{Wss, close_all, open_many};
use crate::report::{JsonLine, Table, median, round};

pub const TARGET_P50_US: f64 = 60.0;
pub const TARGET_P99_US: f64 = 500.0;

#[derive(Args, Debug, Clone)]
pub struct BridgeArgs {
    /// Messages per second on each path, all its sessions together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Sessions per path; each sends rate/sessions messages per second, their schedules
    /// staggered so that the path's messages are evenly spaced.
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Seconds of paced traffic per path and round (split into the --slices passes).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Text message size in bytes (13 to 125).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[command(flatten)]
    pub common: Common,
}

struct Route {
    name: &'static str,
    sessions: Vec<Wss>,
}

/// CPU nanoseconds and the number of times scheduled in, summed over the threads of
/// `pids` (`/proc/<pid>/task/<tid>/schedstat`): each wake-up of a thread is one run.
fn sched(pids: &[u32]) -> (u64, u64) {
    let mut total = (0, 0);
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
            let f: Vec<u64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if let [ns, _, runs] = f[..] {
                total.0 += ns;
                total.1 += runs;
            }
        }
    }
    total
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_owned)).unwrap_or_default()
}

/// The `q` quantile (nearest rank) of sorted `v`, in microseconds.
fn quantile_us(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e6
}

pub async fn run(a: BridgeArgs) -> anyhow::Result<()> {
    if a.common.otel {
        bail!("--otel applies to `handshake` and `echo`");
    }
    if !(13..=125).contains(&a.size) {
        bail!("--size is 13 to 125 bytes");
    }
    let rounds = a.common.rounds.unwrap_or(3).max(1);
    let slices = a.common.slices.max(1);
    let (rate, sessions) = (a.rate.max(1), a.sessions.max(1));
    let slice_ms = (a.seconds * 1000 / slices as u64).max(100);
    let per_session = (u64::from(rate) * slice_ms / 1000 / sessions as u64).max(1) as usize;
    super::check_open_files(sessions as u64 * 8 + 256)?;
    let setup = Setup::new(&a.common, sessions)?;
    let plain = plain_client(&setup, a.common.sources, sessions, false)?;
    let upstream = bare_plain(&setup, "upstream", Http::Raw, &plain).await?;
    let url = format!("ws://127.0.0.1:{}{}", upstream.addr.port(), crate::fixture::PATH);
    let node = palisade(&setup, "palisade", &NodeVariant::Upstream(url.clone()), &setup.client).await?;
    let direct = setup.start(Kind::Bare(Http::Raw)).await?;
    let servers = [node, direct, upstream];
    banner(
        "bridge",
        &setup,
        &servers,
        &format!(
            "{rate} messages/s of {} bytes per path over {sessions} sessions, {} s per path and round in {slices} interleaved slices, {rounds} rounds (+1 warm-up slice); palisade's upstream {url}",
            a.size, a.seconds
        ),
    );
    let load_start = loadavg();
    let mut routes = Vec::new();
    for (name, server, client) in
        [("palisade", &servers[0], &setup.client), ("direct-wss", &servers[1], &setup.client), ("direct-ws", &servers[2], &plain)]
    {
        let (opened, o) = open_many(client, server.addr, sessions, sessions, |ws| ws, false).await;
        if o.unsuccessful() > 0 {
            bail!("{name}: opening the sessions: {}", o.describe());
        }
        routes.push(Route { name, sessions: opened });
    }

    let gap = Duration::from_secs(1) / rate;
    let mut problems: Vec<String> = Vec::new();
    let mut table = Table::new(&[
        "round",
        "path",
        "messages",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "front CPU us/msg",
        "front runs/msg",
    ]);
    // The server the client talks to on each path: palisade (its upstream's share is the
    // direct-ws figure), the TLS echo server, the upstream.
    let pids: [Vec<u32>; 3] = [vec![servers[0].pid()], vec![servers[1].pid()], vec![servers[2].pid()]];
    // quantiles[round][route] = (p50, p99)
    let mut quantiles: Vec<Vec<Pq>> = Vec::new();
    let order: Vec<usize> = (0..routes.len()).collect();
    // Round 0 is one warm-up slice (not reported).
    for r in 0..=rounds {
        let mut samples: Vec<Vec<Duration>> = routes.iter().map(|_| Vec::new()).collect();
        let mut work = [(0u64, 0u64); 3];
        for slice in 0..if r == 0 { 1 } else { slices } {
            for i in rotated(&order, r * slices + slice) {
                let before = sched(&pids[i]);
                let start = tokio::time::Instant::now() + Duration::from_millis(20);
                let tasks: Vec<_> = std::mem::take(&mut routes[i].sessions)
                    .into_iter()
                    .enumerate()
                    .map(|(j, mut ws)| {
                        let size = a.size;
                        tokio::spawn(async move {
                            let res = ws.paced(start + gap * j as u32, gap * sessions as u32, per_session, size).await;
                            (ws, res)
                        })
                    })
                    .collect();
                for t in tasks {
                    match t.await {
                        Ok((ws, Ok(rtts))) => {
                            samples[i].extend(rtts);
                            routes[i].sessions.push(ws);
                        }
                        Ok((_, Err(e))) => problems.push(format!("{}: {e}", routes[i].name)),
                        Err(e) => problems.push(format!("{}: client task: {e}", routes[i].name)),
                    }
                }
                if routes[i].sessions.is_empty() {
                    bail!("{}: every session failed (first problem: {})", routes[i].name, problems.first().map_or("", |p| p));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let after = sched(&pids[i]);
                work[i].0 += after.0.saturating_sub(before.0);
                work[i].1 += after.1.saturating_sub(before.1);
            }
        }
        if r == 0 {
            continue;
        }
        let mut q = Vec::new();
        for (i, s) in samples.iter_mut().enumerate() {
            s.sort();
            let p = |x| quantile_us(s, x);
            q.push((p(0.5), p(0.99)));
            table.row(vec![
                r.to_string(),
                routes[i].name.into(),
                s.len().to_string(),
                format!("{:.1}", p(0.5)),
                format!("{:.1}", p(0.9)),
                format!("{:.1}", p(0.99)),
                format!("{:.1}", p(0.999)),
                format!("{:.1}", p(1.0)),
                format!("{:.1}", work[i].0 as f64 / 1e3 / s.len().max(1) as f64),
                format!("{:.1}", work[i].1 as f64 / s.len().max(1) as f64),
            ]);
        }
        quantiles.push(q);
    }
    for route in routes {
        let errors = close_all(route.sessions, 8).await;
        if errors > 0 {
            problems.push(format!("{}: {errors} close handshakes did not end cleanly", route.name));
        }
    }
    for s in servers {
        s.stop();
    }
    table.print();
    let mut json = summary(&quantiles, &a, rate, sessions, problems.len());
    // Tails on a shared 2-vCPU machine are mostly scheduling delays: say how busy it was.
    let load_end = loadavg();
    println!("  machine load (1-minute loadavg, {} CPUs): {load_start} at the start, {load_end} at the end", crate::proc::cpus());
    json.set("loadavg_start", load_start);
    json.set("loadavg_end", load_end);
    println!("{json}");
    if let Some(p) = problems.first() {
        bail!("{} session errors (first: {p})", problems.len());
    }
    Ok(())
}

/// One path's (p50, p99) in one round, in microseconds.
type Pq = (f64, f64);

fn summary(q: &[Vec<Pq>], a: &BridgeArgs, rate: u32, sessions: usize, failed: usize) -> JsonLine {
    let med = |f: &dyn Fn(&[Pq]) -> f64| median(&q.iter().map(|r| f(r)).collect::<Vec<_>>());
    let names = ["palisade", "direct-wss", "direct-ws"];
    println!("summary (medians over {} rounds):", q.len());
    let mut json = JsonLine::default();
    json.set("scenario", "bridge");
    for (i, name) in names.iter().enumerate() {
        let (p50, p99) = (med(&|r| r[i].0), med(&|r| r[i].1));
        println!("  {name:<11} p50 {p50:>7.1} us  p99 {p99:>7.1} us");
        let key = name.replace('-', "_");
        json.set(format!("{key}_p50_us"), round(p50, 1));
        json.set(format!("{key}_p99_us"), round(p99, 1));
    }
    // Added latency: palisade minus the baseline within each round, then the median.
    let (add50, add99) = (med(&|r| r[0].0 - r[1].0), med(&|r| r[0].1 - r[1].1));
    let (ws50, ws99) = (med(&|r| r[0].0 - r[2].0), med(&|r| r[0].1 - r[2].1));
    let v = |x: f64, t: f64| if x <= t { "meets" } else { "MISSES" };
    println!(
        "  added by the bridge (palisade - direct-wss): p50 {add50:.1} us (SPEC <= {TARGET_P50_US}: {}), p99 {add99:.1} us (SPEC <= {TARGET_P99_US}: {})",
        v(add50, TARGET_P50_US),
        v(add99, TARGET_P99_US)
    );
    println!("  context, palisade - direct-ws (TLS counted as added): p50 {ws50:.1} us, p99 {ws99:.1} us");
    println!("  session errors: {failed}");
    json.set("added_p50_us", round(add50, 1));
    json.set("added_p99_us", round(add99, 1));
    json.set("added_vs_ws_p50_us", round(ws50, 1));
    json.set("added_vs_ws_p99_us", round(ws99, 1));
    json.set("target_p50_us", TARGET_P50_US);
    json.set("target_p99_us", TARGET_P99_US);
    json.set("baseline", "direct-wss");
    json.set("rounds", q.len());
    json.set("rate", rate);
    json.set("sessions", sessions);
    json.set("seconds", a.seconds);
    json.set("size", a.size);
    json.set("failed", failed);
    json.set("command", crate::command_line());
    json
}
