//! Palisade against the reference Node.js design (SPEC section 12): `node:https` with the
//! bench certificate, npm `ws` on the upgrade event, the Origin checked and the ES256
//! bearer JWT verified with npm `jsonwebtoken` (benches/node-reference/server.js), then an
//! echo. The same client, tokens and handshakes as the `handshake` scenario, all servers
//! in the same interleaved rounds. SPEC target: palisade accepts at least 5x more
//! handshakes per server CPU second. The bare servers of `--baseline` run too, as context:
//! their ratio to the reference is what a server with no checks at all gets here.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::handshake::{Measured, measure};
use super::{Setup, Tally, banner};
use crate::HandshakeArgs;
use crate::fixture::{ORIGIN, PATH};
use crate::proc::Server;
use crate::report::{JsonLine, median, round};

/// Palisade's handshakes per CPU second over the reference's, at least.
pub const TARGET: f64 = 5.0;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/node-reference");

pub async fn run(a: HandshakeArgs) -> anyhow::Result<()> {
    if a.common.otel {
        bail!("--otel applies to `handshake` and `echo`");
    }
    let rounds = a.common.rounds.unwrap_or(5).max(1);
    let n = a.handshakes.max(1);
    let slices = a.common.slices.clamp(1, n);
    let concurrency = a.concurrency.max(1);
    super::check_open_files(concurrency as u64 * 2 + 256)?;
    let node = node_ready()?;
    let warmup = a.warmup.unwrap_or((n / 10).max(100));
    let kinds = 2 + super::kinds(&a.common).len().saturating_sub(1);
    let setup = Setup::new(&a.common, super::handshake::tokens(&a, kinds, warmup, n, rounds))?;
    let mut servers = vec![setup.start(super::Kind::Palisade).await?, start(&setup, &node).await?];
    for k in super::kinds(&a.common).into_iter().skip(1) {
        servers.push(setup.start(k).await?);
    }
    banner(
        "node-reference",
        &setup,
        &servers,
        &format!(
            "{n} handshakes per round and server in {slices} interleaved slices, concurrency {concurrency}, {rounds} rounds, {} source addresses; {}",
            a.common.sources, node.1
        ),
    );
    let Measured { table, tallies, first_problem } = measure(&setup, &servers, warmup, n, slices, concurrency, rounds).await?;
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    for s in servers {
        s.stop();
    }
    table.print();
    let json = summary(&tallies, &names, n, slices, concurrency, &node.1);
    println!("{json}");
    if let Some(p) = first_problem {
        let failed: usize = tallies.iter().flatten().map(|t| t.refused + t.failed).sum();
        bail!("{failed} handshakes were refused or failed (first: {p})");
    }
    Ok(())
}

fn summary(tallies: &[Vec<Tally>], names: &[String], n: usize, slices: usize, concurrency: usize, versions: &str) -> JsonLine {
    let us = |i: usize| median(&tallies.iter().map(|r| r[i].us_per_op()).collect::<Vec<_>>());
    let (palisade_us, node_us) = (us(0), us(1));
    // Handshakes per CPU second: palisade's over the reference's = node us / palisade us.
    let ratio = median(&tallies.iter().map(|r| r[1].us_per_op() / r[0].us_per_op()).collect::<Vec<_>>());
    let failed: usize = tallies.iter().flatten().map(|t| t.refused + t.failed).sum();
    let (cpu, ticks): (f64, f64) = tallies.iter().flatten().fold((0.0, 0.0), |(c, k), t| (c + t.cpu_s, k + t.tick_s));
    let verdict = if ratio >= TARGET { "meets" } else { "MISSES" };
    println!("summary (medians over {} rounds):", tallies.len());
    println!("  {:<14} {palisade_us:>8.1} us/handshake  {:>6.0} handshakes per server CPU second", names[0], 1e6 / palisade_us);
    println!("  {:<14} {node_us:>8.1} us/handshake  {:>6.0} handshakes per server CPU second", names[1], 1e6 / node_us);
    let mut context = Vec::new();
    for (i, name) in names.iter().enumerate().skip(2) {
        let r = median(&tallies.iter().map(|r| r[1].us_per_op() / r[i].us_per_op()).collect::<Vec<_>>());
        println!(
            "  {name:<14} {:>8.1} us/handshake  {:>6.0} handshakes per server CPU second  (context, no checks: {r:.2}x the reference)",
            us(i),
            1e6 / us(i)
        );
        context.push((name.replace('-', "_"), us(i), r));
    }
    println!(
        "  palisade/{}: {ratio:.2}x the handshakes per CPU second (median of per-round ratios; {:.2} ratio of medians); SPEC target >= {TARGET}x: {verdict}",
        names[1],
        node_us / palisade_us
    );
    println!("  server CPU: total {cpu:.2} s (stat ticks: {ticks:.2} s); refused or failed handshakes: {failed}");
    let mut json = JsonLine::default();
    json.set("scenario", "node-reference");
    json.set("palisade_us", round(palisade_us, 2));
    json.set("node_us", round(node_us, 2));
    json.set("palisade_per_cpu_s", round(1e6 / palisade_us, 0));
    json.set("node_per_cpu_s", round(1e6 / node_us, 0));
    json.set("ratio", round(ratio, 3));
    json.set("ratio_of_medians", round(node_us / palisade_us, 3));
    for (key, us, r) in context {
        json.set(format!("{key}_us"), round(us, 2));
        json.set(format!("{key}_vs_node"), round(r, 3));
    }
    json.set("rounds", tallies.len());
    json.set("target", TARGET);
    json.set("reference", versions);
    json.set("handshakes", n);
    json.set("slices", slices);
    json.set("concurrency", concurrency);
    json.set("failed", failed);
    json.set("command", crate::command_line());
    json
}

/// The node binary and the installed packages (installed with
/// `scripts/install-bench-deps.sh` when missing), and their versions.
fn node_ready() -> anyhow::Result<(PathBuf, String)> {
    let node = which("node").context("node not found on PATH: run scripts/install-bench-deps.sh")?;
    let dir = Path::new(DIR);
    if !dir.join("node_modules/ws").is_dir() || !dir.join("node_modules/jsonwebtoken").is_dir() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-bench-deps.sh");
        println!("installing the reference's npm packages: bash {script}");
        let status = std::process::Command::new("bash").arg(script).status().context("cannot run install-bench-deps.sh")?;
        if !status.success() {
            bail!("scripts/install-bench-deps.sh failed ({status})");
        }
    }
    let version = |what: &str| -> anyhow::Result<String> {
        let out = std::process::Command::new(&node).current_dir(dir).args(["-p", what]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let versions = format!(
        "node {} ws {} jsonwebtoken {}",
        version("process.version")?,
        version("require('ws/package.json').version")?,
        version("require('jsonwebtoken/package.json').version")?
    );
    Ok((node, versions))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
}

/// Starts benches/node-reference/server.js on a free port with the bench certificate, the
/// bench public key and the allowed Origin.
async fn start(setup: &Setup, node: &(PathBuf, String)) -> anyhow::Result<Server> {
    let f = &setup.fixture;
    let key = f.policy_doc.auth.keys.first().and_then(|k| k.public_key_pem.clone()).context("no bench public key")?;
    let key_file = f.dir.path().join("bench-jwt.pub.pem");
    std::fs::write(&key_file, key)?;
    let port = crate::proc::free_port()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let log = f.dir.path().join(format!("node-ws-{port}.log"));
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        format!("{DIR}/server.js"),
        "--port".into(),
        port.to_string(),
        "--cert".into(),
        path(&f.cert),
        "--key".into(),
        path(&f.key),
        "--jwt-key".into(),
        path(&key_file),
        "--origin".into(),
        ORIGIN.into(),
        "--path".into(),
        PATH.into(),
    ];
    let server = Server::spawn("node-ws", &node.0, &args, &log, addr)?;
    setup.ready(server, &setup.client).await
}
