//! Every row of SPEC section 12's data path and every peer, in one command: each scenario
//! runs as a child process of this binary (its servers start and end with it), its output
//! is passed through, and its final JSON line is read back. Then one table of every bar
//! (measured, target, met) and every peer ratio, and one JSON line of them all.
//!
//! Defaults are sized to finish within 15 minutes on the 2-vCPU machine (benches/README.md
//! gives the timings). A scenario that exits non-zero (a server refused or failed, or it
//! could not run) is reported and makes the whole run exit 1 after the others ran; a
//! missed bar is a result, not a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use crate::report::{JsonLine, Table};

#[derive(Args, Debug, Clone)]
pub struct BarsArgs {
    /// The palisade binary (default: target/release/palisade of this workspace).
    #[arg(long)]
    pub palisade_bin: Option<PathBuf>,
    /// Leave out the peers (Envoy, HAProxy, nginx + njs); they are skipped anyway when
    /// none is installed (`scripts/install-peers.sh`).
    #[arg(long)]
    pub no_peers: bool,
    /// Only these steps (names as in the table: handshake, handshake-reconnect,
    /// node-reference, echo, echo-window-1, memory, memory-offloaded, bridge, peers).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// One step: its name in the table, and the scenario's command line.
struct Step {
    name: &'static str,
    args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step { name: "handshake", args: &["handshake", "--rounds", "8"] },
    Step { name: "handshake-reconnect", args: &["handshake", "--reconnect", "--rounds", "3"] },
    Step { name: "node-reference", args: &["node-reference", "--rounds", "5"] },
    Step { name: "echo", args: &["echo", "--rounds", "5"] },
    Step { name: "echo-window-1", args: &["echo", "--window", "1", "--messages", "1000", "--rounds", "5"] },
    Step { name: "memory", args: &["memory", "--connections", "15000", "--rounds", "2"] },
    Step { name: "memory-offloaded", args: &["memory-offloaded", "--rounds", "2"] },
    Step { name: "bridge", args: &["bridge"] },
    Step { name: "peers", args: &["peers", "--handshakes", "500", "--messages", "4000", "--rounds", "3", "--idle", "1000"] },
];

/// A row of the summary.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub bar: String,
    pub measured: String,
    pub target: String,
    /// `None`: context, no target.
    pub met: Option<bool>,
}

pub fn run(a: BarsArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut json = JsonLine::default();
    json.set("scenario", "bars");
    for step in STEPS {
        if (step.name == "peers" && a.no_peers) || (!a.only.is_empty() && !a.only.iter().any(|o| o == step.name)) {
            continue;
        }
        let mut args: Vec<String> = step.args.iter().map(|s| s.to_string()).collect();
        if let Some(bin) = &a.palisade_bin {
            args.push("--palisade-bin".into());
            args.push(bin.display().to_string());
        }
        println!("\n=== {} ({} s so far): palisade-bench {}", step.name, started.elapsed().as_secs(), args.join(" "));
        let (ok, line) = run_child(&exe, &args)?;
        let parsed = line.as_deref().and_then(|l| serde_json::from_str::<Value>(l).ok());
        match &parsed {
            Some(v) => {
                rows.extend(rows_of(step.name, v));
                json.set(step.name, v.clone());
            }
            None => rows.push(Row { bar: step.name.into(), measured: "no result".into(), target: "-".into(), met: Some(false) }),
        }
        if !ok {
            failed.push(step.name.into());
        }
    }
    let elapsed = started.elapsed().as_secs();
    println!("\nsummary of every bar ({elapsed} s in all):");
    let mut t = Table::new(&["bar", "measured", "target", "met"]);
    for r in &rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        t.row(vec![r.bar.clone(), r.measured.clone(), r.target.clone(), met.into()]);
    }
    t.print();
    let missed: Vec<&str> = rows.iter().filter(|r| r.met == Some(false)).map(|r| r.bar.as_str()).collect();
    println!(
        "  met {} of {}; missed: {}",
        rows.iter().filter(|r| r.met == Some(true)).count(),
        rows.iter().filter(|r| r.met.is_some()).count(),
        if missed.is_empty() { "none".into() } else { missed.join(", ") }
    );
    json.set("missed", missed.into_iter().map(Value::from).collect::<Vec<_>>());
    json.set("elapsed_s", elapsed);
    json.set("failed", failed.len());
    json.set("command", crate::command_line());
    println!("{json}");
    if !failed.is_empty() {
        bail!("{} step(s) refused, failed or could not run: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// Runs one scenario, passing its output through; its exit status and its last JSON line.
fn run_child(exe: &std::path::Path, args: &[String]) -> anyhow::Result<(bool, Option<String>)> {
    let mut child = Command::new(exe).args(args).stdout(Stdio::piped()).spawn().with_context(|| format!("cannot run {}", exe.display()))?;
    let mut last = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if line.starts_with('{') {
                last = Some(line);
            }
        }
    }
    Ok((child.wait()?.success(), last))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A figure that must be at most its target; both come from the scenario's JSON line (the
/// scenario owns its target), and a missing one is a miss.
fn at_most(bar: &str, v: &Value, key: &str, target_key: &str, unit: &str, decimals: usize) -> Row {
    let (value, target) = (num(v, key), num(v, target_key));
    Row {
        bar: bar.into(),
        measured: value.map_or("missing".into(), |x| format!("{x:.decimals$}{unit}")),
        target: target.map_or("missing".into(), |t| format!("<= {t}{unit}")),
        met: Some(matches!((value, target), (Some(x), Some(t)) if x <= t)),
    }
}

/// The rows a scenario's JSON line gives.
pub fn rows_of(step: &str, v: &Value) -> Vec<Row> {
    match step {
        "handshake" => {
            // Context: what the bare server plus the one check that must cost (an ES256
            // verification, measured in the bench process) would be.
            let floor = match (num(v, "baseline_us"), num(v, "es256_verify_us")) {
                (Some(b), Some(e)) if b > 0.0 => format!("{:.3}x", (b + e) / b),
                _ => "missing".into(),
            };
            vec![
                at_most("handshake CPU vs bare", v, "ratio", "target", "x", 3),
                Row { bar: "handshake floor: bare + one ES256 verify".into(), measured: floor, target: "context".into(), met: None },
            ]
        }
        "handshake-reconnect" => vec![Row {
            bar: "reconnect with the same token vs bare".into(),
            measured: num(v, "ratio").map_or("missing".into(), |r| format!("{r:.3}x")),
            target: "context".into(),
            met: None,
        }],
        "node-reference" => {
            // Higher is better here: at least the target.
            let (ratio, target) = (num(v, "ratio"), num(v, "target"));
            vec![Row {
                bar: "handshakes per CPU second vs Node design".into(),
                measured: ratio.map_or("missing".into(), |r| format!("{r:.2}x")),
                target: target.map_or("missing".into(), |t| format!(">= {t}x")),
                met: Some(matches!((ratio, target), (Some(r), Some(t)) if r >= t)),
            }]
        }
        "echo" => vec![at_most("echo CPU per message vs bare", v, "ratio", "target", "x", 3)],
        "echo-window-1" => vec![Row {
            bar: "echo, one message in flight".into(),
            measured: num(v, "ratio").map_or("missing".into(), |r| format!("{r:.3}x")),
            target: "context".into(),
            met: None,
        }],
        "memory" => {
            vec![at_most("idle memory per WSS connection", v, "palisade_kib", "target_kib", " KiB", 2)]
        }
        "memory-offloaded" => {
            vec![at_most("idle memory, TLS offloaded", v, "palisade_kib", "target_kib", " KiB", 2)]
        }
        "bridge" => vec![
            at_most("bridge latency added, p50", v, "added_p50_us", "target_p50_us", " us", 1),
            at_most("bridge latency added, p99", v, "added_p99_us", "target_p99_us", " us", 1),
        ],
        "peers" => {
            let mut rows = Vec::new();
            for (peer, label) in [("envoy", "Envoy"), ("haproxy", "HAProxy"), ("nginx_njs", "nginx + njs")] {
                for (what, key) in
                    [("CPU per handshake", "handshake"), ("CPU per bridged message", "message"), ("RSS per idle bridged connection", "rss")]
                {
                    // Palisade / peer: below 1, palisade is cheaper (the bar).
                    if let Some(r) = num(v, &format!("{peer}_{key}_ratio")) {
                        rows.push(Row {
                            bar: format!("{what} vs {label}"),
                            measured: format!("{r:.3}x"),
                            target: "< 1x".into(),
                            met: Some(r < 1.0),
                        });
                    }
                }
            }
            // Context for the bridge bar: the paced round trip through each gateway.
            let fastest = ["envoy", "haproxy", "nginx_njs"].iter().filter_map(|p| num(v, &format!("{p}_p50_us"))).reduce(f64::min);
            if let (Some(ours), Some(best)) = (num(v, "palisade_p50_us"), fastest) {
                rows.push(Row {
                    bar: "bridged round trip p50 vs the fastest peer".into(),
                    measured: format!("{ours:.1} / {best:.1} us"),
                    target: "context".into(),
                    met: None,
                });
            }
            rows
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bar_is_judged_against_its_own_target() {
        let hs: Value = serde_json::from_str(r#"{"scenario":"handshake","ratio":1.251,"target":1.25}"#).unwrap();
        assert_eq!(rows_of("handshake", &hs)[0].met, Some(false), "1.251 misses 1.25");
        let hs: Value = serde_json::from_str(r#"{"scenario":"handshake","ratio":1.25,"target":1.25}"#).unwrap();
        assert_eq!(rows_of("handshake", &hs)[0].met, Some(true));
        // Higher is better for the Node design.
        let nr: Value = serde_json::from_str(r#"{"ratio":4.9,"target":5.0}"#).unwrap();
        assert_eq!(rows_of("node-reference", &nr)[0].met, Some(false));
        let nr: Value = serde_json::from_str(r#"{"ratio":5.1,"target":5.0}"#).unwrap();
        assert_eq!(rows_of("node-reference", &nr)[0].met, Some(true));
        let mem: Value = serde_json::from_str(r#"{"palisade_kib":10.8,"target_kib":12}"#).unwrap();
        assert_eq!(rows_of("memory", &mem)[0].met, Some(true));
        let br: Value =
            serde_json::from_str(r#"{"added_p50_us":88.3,"added_p99_us":120.9,"target_p50_us":60,"target_p99_us":500}"#).unwrap();
        let rows = rows_of("bridge", &br);
        assert_eq!((rows[0].met, rows[1].met), (Some(false), Some(true)));
        assert_eq!(rows_of("echo-window-1", &serde_json::json!({"ratio": 1.05}))[0].met, None, "context only");
        let hs: Value = serde_json::from_str(r#"{"ratio":1.3,"target":1.25,"baseline_us":140,"es256_verify_us":49}"#).unwrap();
        let rows = rows_of("handshake", &hs);
        assert_eq!((rows[1].measured.as_str(), rows[1].met), ("1.350x", None), "the floor is context");
        assert_eq!(rows_of("handshake-reconnect", &serde_json::json!({"ratio": 1.04}))[0].measured, "1.040x");
    }

    #[test]
    fn a_missing_figure_is_a_miss_and_peers_must_be_strictly_cheaper() {
        assert_eq!(rows_of("echo", &serde_json::json!({"scenario": "echo"}))[0].met, Some(false));
        assert_eq!(rows_of("echo", &serde_json::json!({"ratio": 0.2}))[0].met, Some(false), "no target: a miss");
        let p = serde_json::json!({"haproxy_handshake_ratio": 0.55, "haproxy_message_ratio": 1.0, "haproxy_rss_ratio": 0.68});
        let rows = rows_of("peers", &p);
        assert_eq!(rows.len(), 3, "a peer that did not run has no rows");
        let with_latency = serde_json::json!({"palisade_p50_us": 110.0, "haproxy_p50_us": 105.7, "envoy_p50_us": 101.5});
        let context = rows_of("peers", &with_latency);
        assert_eq!((context[0].measured.as_str(), context[0].met), ("110.0 / 101.5 us", None));
        assert_eq!(rows.iter().map(|r| r.met).collect::<Vec<_>>(), [Some(true), Some(false), Some(true)]);
        assert!(rows[1].bar.contains("message") && rows[1].bar.contains("HAProxy"));
    }
}
