//! The fleet bars of SPEC section 12, with real processes and a real etcd:
//!
//! - **push**: `FleetControl.ApplyPolicy` to N real `palisade node` processes (default
//!   20), timed from the operator call until its answer, which comes once every node has
//!   applied the policy (the answer lists each node's result; every one must be `ok`);
//!   p99 <= 150 ms;
//! - **disconnect**: one subject with a session on every node, `FleetControl.Disconnect`
//!   of it, timed from the call's start until the last client has its close frame (4003),
//!   measured at the clients; p99 <= 150 ms;
//! - **scale**: M simulated nodes (default 1,000) under a second controller: real node
//!   code (`palisade_node::Node`, each with its WSS and mTLS control listeners, its own
//!   etcd registration under a lease and its policy watch), M of them served by one
//!   `palisade-bench fleet-sim` process because a thousand node processes do not fit
//!   this machine; a push completes within 1 s and the controller's RSS stays <= 150 MB.
//!
//! Nothing here is a test: the run reports medians and p99 and exits 1 when a node
//! refused, a push did not converge, or a session was not closed.

mod cap;
pub mod sim;
mod stack;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use palisade_proto::controller::v1 as pb;
use palisade_proto::node::v1 as npb;

use crate::client::Client;
use crate::fixture::Fixture;
use crate::report::{JsonLine, Table, round};
use stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Real node processes for the push and disconnect bars.
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Timed policy pushes to them.
    #[arg(long, default_value_t = 40)]
    pub pushes: usize,
    /// Timed fleet disconnects (a new subject with a session on every node each time).
    #[arg(long, default_value_t = 20)]
    pub disconnects: usize,
    /// Handshakes per burst for the fleet-cap cost (cap on against off; 0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub cap_handshakes: usize,
    /// Rounds of (cap on, cap off) bursts.
    #[arg(long, default_value_t = 4)]
    pub cap_rounds: usize,
    /// Simulated nodes for the scale bar (0: skip it).
    #[arg(long, default_value_t = 1000)]
    pub simulated: usize,
    /// Timed pushes to the simulated fleet.
    #[arg(long, default_value_t = 10)]
    pub scale_pushes: usize,
    /// The palisade binary (default: target/release/palisade of this workspace).
    #[arg(long)]
    pub palisade_bin: Option<std::path::PathBuf>,
    /// Keep the temporary directory (certificates, configs, logs) and print its path.
    #[arg(long)]
    pub keep_files: bool,
}

/// Nearest-rank percentile of `xs` (milliseconds).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

pub async fn run(a: FleetArgs) -> anyhow::Result<()> {
    let fixture = Fixture::new(a.keep_files)?;
    if a.keep_files {
        println!("files kept in {}", fixture.dir.path().display());
    }
    let bin = stack::palisade_bin(a.palisade_bin.as_deref(), &fixture)?;
    let mut out = JsonLine::default();
    out.set("scenario", "fleet");
    let mut failed = Vec::new();

    if a.nodes > 0 {
        let mut stack = Stack::start(&fixture, &bin, "bench").await?;
        stack.spawn_nodes(a.nodes).await?;
        let mut ctl = stack.operator().await?;
        stack.wait_reachable(&mut ctl, a.nodes, Duration::from_secs(60)).await?;
        println!("fleet: {} node processes registered and reachable", a.nodes);

        let push = time_pushes(&mut ctl, &fixture, a.pushes, &mut failed).await?;
        let disc = time_disconnects(&mut ctl, &fixture, &stack, a.disconnects, &mut failed).await?;
        let mut t = Table::new(&["bar", "samples", "p50 ms", "p99 ms", "max ms", "target"]);
        for (name, xs) in [("policy push, every node applied", &push), ("fleet disconnect, last close frame", &disc)] {
            t.row(vec![
                name.into(),
                xs.len().to_string(),
                format!("{:.1}", percentile(xs, 50.0)),
                format!("{:.1}", percentile(xs, 99.0)),
                format!("{:.1}", percentile(xs, 100.0)),
                "p99 <= 150".into(),
            ]);
        }
        t.print();
        out.set("nodes", a.nodes as u64);
        out.set("push_p50_ms", round(percentile(&push, 50.0), 1));
        out.set("push_p99_ms", round(percentile(&push, 99.0), 1));
        out.set("disconnect_p50_ms", round(percentile(&disc, 50.0), 1));
        out.set("disconnect_p99_ms", round(percentile(&disc, 99.0), 1));
        if a.cap_handshakes > 0
            && let Some(node) = stack.first_node()
        {
            let c = cap::measure(&mut ctl, &fixture, &stack, node, a.cap_handshakes, a.cap_rounds).await?;
            let mut t = Table::new(&["fleet cap, one node", "cap on", "cap off", "ratio"]);
            t.row(vec![
                "node CPU us / handshake".into(),
                format!("{:.0}", c.on_us),
                format!("{:.0}", c.off_us),
                format!("{:.2}", c.on_us / c.off_us),
            ]);
            t.row(vec![
                "wall us / handshake (16 in flight)".into(),
                format!("{:.0}", c.on_wall_us),
                format!("{:.0}", c.off_wall_us),
                format!("{:.2}", c.on_wall_us / c.off_wall_us),
            ]);
            t.row(vec!["etcd proposals / handshake".into(), format!("{:.2}", c.proposals), "-".into(), "-".into()]);
            t.row(vec!["etcd puts+deletes / handshake".into(), format!("{:.2}", c.writes), "-".into(), "-".into()]);
            t.print();
            println!("at 1,000 capped handshakes/s etcd commits about {:.0} proposals/s", c.proposals * 1000.0);
            out.set("cap_cpu_ratio", round(c.on_us / c.off_us, 3));
            out.set("cap_on_cpu_us", round(c.on_us, 1));
            out.set("cap_off_cpu_us", round(c.off_us, 1));
            out.set("cap_wall_ratio", round(c.on_wall_us / c.off_wall_us, 3));
            out.set("cap_etcd_proposals_per_handshake", round(c.proposals, 2));
            out.set("cap_etcd_writes_per_handshake", round(c.writes, 2));
        }
        stack.stop();
    }

    if a.simulated > 0 {
        let mut stack = Stack::start(&fixture, &bin, "bench-sim").await?;
        let started = Instant::now();
        stack.spawn_simulator(a.simulated).await?;
        let mut ctl = stack.operator().await?;
        stack.wait_reachable(&mut ctl, a.simulated, Duration::from_secs(300)).await?;
        println!("fleet: {} simulated nodes registered and reachable after {:.1} s", a.simulated, started.elapsed().as_secs_f64());
        let idle_rss = stack.controller_rss_kib()?;
        let push = time_pushes(&mut ctl, &fixture, a.scale_pushes, &mut failed).await?;
        let (rss, hwm) = (stack.controller_rss_kib()?, stack.controller_hwm_kib()?);
        let mut t = Table::new(&["scale bar", "value", "target"]);
        t.row(vec![format!("push to {} nodes, p50 ms", a.simulated), format!("{:.1}", percentile(&push, 50.0)), "-".into()]);
        t.row(vec![format!("push to {} nodes, max ms", a.simulated), format!("{:.1}", percentile(&push, 100.0)), "<= 1000".into()]);
        t.row(vec!["controller RSS idle, MiB".into(), format!("{:.1}", idle_rss as f64 / 1024.0), "-".into()]);
        t.row(vec!["controller RSS after pushes, MiB".into(), format!("{:.1}", rss as f64 / 1024.0), "<= 150".into()]);
        t.row(vec!["controller peak RSS (VmHWM), MiB".into(), format!("{:.1}", hwm as f64 / 1024.0), "<= 150".into()]);
        t.print();
        out.set("simulated", a.simulated as u64);
        out.set("scale_push_p50_ms", round(percentile(&push, 50.0), 1));
        out.set("scale_push_max_ms", round(percentile(&push, 100.0), 1));
        out.set("controller_rss_mib", round(rss as f64 / 1024.0, 1));
        out.set("controller_hwm_mib", round(hwm as f64 / 1024.0, 1));
        stack.stop();
    }
    out.set("command", crate::command_line());
    out.set("failures", failed.len() as u64);
    println!("{out}");
    if !failed.is_empty() {
        bail!("{} failures: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// `n` pushes, each a new document (one more allowed Origin), timed from the call until
/// the answer; every node must report `ok` with the new version.
async fn time_pushes(ctl: &mut stack::Operator, fixture: &Fixture, n: usize, failed: &mut Vec<String>) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..n {
        let mut doc = fixture.policy_doc.clone();
        doc.origins.allow.push(format!("https://push-{i}-{}.bench.example", rand::random::<u32>()));
        let req =
            pb::ApplyPolicyRequest { policy: Some(palisade_policy::wire::versioned(0, &doc)), dry_run: false, expected_version: None };
        let t0 = Instant::now();
        let r = ctl.apply_policy(req).await.context("ApplyPolicy")?.into_inner();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let bad: Vec<String> =
            r.results.iter().filter(|n| !n.ok || n.version != r.version).map(|n| format!("{}: {}", n.node_id, n.error)).collect();
        if !r.converged || !bad.is_empty() {
            failed.push(format!("push {i} did not converge: {}", bad.join(", ")));
        }
        times.push(ms);
    }
    Ok(times)
}

/// `n` rounds: a session of a new subject on every node, then one fleet disconnect of
/// it; the time from the call's start to the last close frame seen by a client.
async fn time_disconnects(
    ctl: &mut stack::Operator,
    fixture: &Fixture,
    stack: &Stack,
    n: usize,
    failed: &mut Vec<String>,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for round in 0..n {
        let sub = format!("victim-{round}-{}", rand::random::<u32>());
        let client = Client::new(&fixture.ca_pem, 4, vec![fixture.bearer_for(&sub)?])?;
        let mut sessions = Vec::new();
        for addr in stack.node_addrs() {
            sessions.push(client.open(addr).await.map_err(|e| anyhow::anyhow!("a session on {addr}: {e}"))?);
        }
        let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
        let waiters: Vec<_> = sessions
            .into_iter()
            .map(|mut ws| {
                let mut go = go_rx.clone();
                tokio::spawn(async move {
                    let code = ws.wait_close().await;
                    let at = Instant::now();
                    let start = match *go.borrow_and_update() {
                        Some(s) => s,
                        None => return Err("closed before the disconnect call".to_string()),
                    };
                    code.map(|c| (c, at.saturating_duration_since(start)))
                })
            })
            .collect();
        let selector = Some(npb::Selector { target: Some(npb::selector::Target::Subject(sub.clone())) });
        let t0 = Instant::now();
        go_tx.send_replace(Some(t0));
        let r = ctl.disconnect(pb::DisconnectRequest { selector, code: 4003, reason: "bench".into(), node_id: String::new() }).await?;
        let closed = r.into_inner().closed as usize;
        let mut worst = Duration::ZERO;
        for w in waiters {
            match w.await? {
                Ok((4003, d)) => worst = worst.max(d),
                Ok((code, _)) => failed.push(format!("disconnect {round}: close code {code}, not 4003")),
                Err(e) => failed.push(format!("disconnect {round}: {e}")),
            }
        }
        if closed != stack.node_addrs().len() {
            failed.push(format!("disconnect {round}: {closed} closed of {}", stack.node_addrs().len()));
        }
        times.push(worst.as_secs_f64() * 1e3);
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&xs, 50.0), 50.0);
        assert_eq!(super::percentile(&xs, 99.0), 99.0);
        assert_eq!(super::percentile(&xs, 100.0), 100.0);
        assert_eq!(super::percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
    }
}
