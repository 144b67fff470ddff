//! The pass condition (flat lines once the churn has stopped), the charts, and the files
//! of a soak run: `samples.csv`, `summary.json`, one SVG per series.

use std::path::Path;

use anyhow::Context as _;

use super::chart::{Chart, Line, render};
use super::sample::{Sample, slope};
use crate::report::{JsonLine, median, round};

/// What the pass condition is checked against.
pub struct Limits {
    pub fd_slack: u64,
    /// Largest RSS slope allowed over the end window, KiB per second.
    pub rss_slope_kib_s: f64,
    /// The end windows: descriptors over the last `fd_window` samples, RSS slope over the
    /// last `rss_window`.
    pub fd_window: usize,
    pub rss_window: usize,
}

pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// The figures of a run, from its samples.
pub struct Figures {
    pub rss_idle: u64,
    /// The largest RSS of the churn, and of the churn plus its teardown (the cool-down's
    /// first seconds, until the client has no session or stalled socket left).
    pub rss_peak_churn: u64,
    pub rss_peak: u64,
    pub rss_final: u64,
    pub rss_end_slope: f64,
    pub rss_churn_slope_kib_min: f64,
    pub fds_idle: u64,
    pub fds_peak: u64,
    pub fds_final: u64,
    pub fds_end_max: u64,
    pub node_sessions_peak: u64,
    pub node_sessions_final: Option<u64>,
    pub client_sessions_peak: i64,
    pub churn_start: f64,
    pub churn_stop: f64,
}

fn phase<'a>(s: &'a [Sample], p: &str) -> Vec<&'a Sample> {
    s.iter().filter(|x| x.phase == p).collect()
}

pub fn figures(samples: &[Sample], limits: &Limits) -> Figures {
    let (idle, churn, cool) = (phase(samples, "idle"), phase(samples, "churn"), phase(samples, "cooldown"));
    let med = |v: &[&Sample], f: fn(&Sample) -> u64| median(&v.iter().map(|s| f(s) as f64).collect::<Vec<_>>()) as u64;
    let last = |n: usize| &cool[cool.len().saturating_sub(n)..];
    let rss_pts: Vec<(f64, f64)> = last(limits.rss_window).iter().map(|s| (s.t, s.rss_kib as f64)).collect();
    let second_half = &churn[churn.len() / 2..];
    let churn_pts: Vec<(f64, f64)> = second_half.iter().map(|s| (s.t, s.rss_kib as f64)).collect();
    let end = samples.last();
    let teardown = cool.iter().position(|s| s.client_sessions == 0 && s.stalled == 0).map_or(cool.len(), |i| i + 1);
    let rss_peak_churn = churn.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    Figures {
        rss_idle: med(&idle, |s| s.rss_kib),
        rss_peak_churn,
        rss_peak: cool[..teardown].iter().map(|s| s.rss_kib).fold(rss_peak_churn, u64::max),
        rss_final: end.map_or(0, |s| s.rss_kib),
        rss_end_slope: slope(&rss_pts),
        rss_churn_slope_kib_min: slope(&churn_pts) * 60.0,
        fds_idle: med(&idle, |s| s.fds),
        fds_peak: churn.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_final: end.map_or(0, |s| s.fds),
        fds_end_max: last(limits.fd_window).iter().map(|s| s.fds).max().unwrap_or(0),
        node_sessions_peak: churn.iter().filter_map(|s| s.node_sessions).max().unwrap_or(0),
        node_sessions_final: end.and_then(|s| s.node_sessions),
        client_sessions_peak: churn.iter().map(|s| s.client_sessions).max().unwrap_or(0),
        churn_start: churn.first().map_or(0.0, |s| s.t),
        churn_stop: cool.first().map_or_else(|| end.map_or(0.0, |s| s.t), |s| s.t),
    }
}

/// The checks on the end of the cool-down.
pub fn checks(f: &Figures, limits: &Limits, end: Option<&Sample>) -> Vec<Check> {
    let mut c = vec![
        Check {
            name: "descriptors back to the idle baseline",
            pass: f.fds_end_max <= f.fds_idle + limits.fd_slack,
            detail: format!(
                "max {} over the last {} s, idle baseline {} + slack {}",
                f.fds_end_max, limits.fd_window, f.fds_idle, limits.fd_slack
            ),
        },
        Check {
            name: "RSS not growing at the end",
            pass: f.rss_end_slope <= limits.rss_slope_kib_s,
            detail: format!(
                "slope {:.2} KiB/s over the last {} s (limit {} KiB/s)",
                f.rss_end_slope, limits.rss_window, limits.rss_slope_kib_s
            ),
        },
        Check {
            name: "final RSS not above the peak of the churn and its teardown",
            pass: f.rss_final <= f.rss_peak,
            detail: format!("final {} KiB, peak {} KiB (churn alone: {} KiB)", f.rss_final, f.rss_peak, f.rss_peak_churn),
        },
        Check {
            name: "no session left in the node",
            pass: f.node_sessions_final == Some(0),
            detail: format!("GetStats active_connections at the end: {:?}", f.node_sessions_final),
        },
    ];
    if let Some(s) = end {
        c.push(Check {
            name: "no client session or stalled socket left",
            pass: s.client_sessions == 0 && s.stalled == 0,
            detail: format!("{} sessions, {} stalled sockets", s.client_sessions, s.stalled),
        });
    }
    c
}

/// `samples.csv`, the charts, `summary.json`.
pub fn write(dir: &Path, csv: &str, samples: &[Sample], f: &Figures, limits: &Limits, json: &JsonLine) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let put = |name: &str, text: &str| std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"));
    put("samples.csv", csv)?;
    put("summary.json", &format!("{json}\n"))?;
    let t: Vec<f64> = samples.iter().map(|s| s.t).collect();
    let series = |f: fn(&Sample) -> Option<f64>| samples.iter().map(f).collect::<Vec<_>>();
    let line = |label: &str, color: &'static str, values: Vec<Option<f64>>| Line { label: label.into(), color, values };
    let end = t.last().copied().unwrap_or(0.0);
    let spans = vec![
        (0.0, f.churn_start, "idle".to_string()),
        (f.churn_start, f.churn_stop, "churn".into()),
        (f.churn_stop, end, "cool-down".into()),
    ];
    let marks = vec![(f.churn_stop, "churn stops".to_string())];
    let chart = |title: &str, y: &str, lines: Vec<Line>, levels: Vec<(f64, String)>| {
        render(&Chart { title: title.into(), y_label: y.into(), t: &t, lines, marks: marks.clone(), levels, spans: spans.clone() })
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let charts = [
        (
            "rss.svg",
            chart(
                "Node RSS (VmRSS)",
                "MiB",
                vec![line("RSS", "#1f77b4", series(|s| Some(s.rss_kib as f64 / 1024.0)))],
                vec![(mib(f.rss_peak), format!("peak of the churn and its teardown {:.1} MiB", mib(f.rss_peak)))],
            ),
        ),
        (
            "fds.svg",
            chart(
                "Node open file descriptors (/proc/PID/fd)",
                "descriptors",
                vec![line("open fds", "#2ca02c", series(|s| Some(s.fds as f64)))],
                vec![((f.fds_idle + limits.fd_slack) as f64, format!("idle baseline {} + {}", f.fds_idle, limits.fd_slack))],
            ),
        ),
        (
            "sessions.svg",
            chart(
                "Live sessions",
                "sessions",
                vec![
                    line("node (GetStats active_connections)", "#d62728", series(|s| s.node_sessions.map(|v| v as f64))),
                    line("client's open sessions", "#1f77b4", series(|s| Some(s.client_sessions as f64))),
                    line("stalled sockets", "#7f7f7f", series(|s| Some(s.stalled as f64))),
                ],
                Vec::new(),
            ),
        ),
        (
            "latency.svg",
            chart(
                "Handshake latency (TCP + TLS 1.3 + upgrade, client side, per second)",
                "ms",
                vec![line("p50", "#1f77b4", series(|s| s.p50_ms)), line("p99", "#ff7f0e", series(|s| s.p99_ms))],
                Vec::new(),
            ),
        ),
        (
            "load.svg",
            chart(
                "Load: handshakes and refusals per second, node CPU",
                "per second / % of one CPU",
                vec![
                    line("sessions opened/s", "#1f77b4", series(|s| Some(s.opened as f64))),
                    line("refused/s (expected)", "#ff7f0e", series(|s| Some(s.refused as f64))),
                    line("node CPU %", "#9467bd", series(|s| Some(s.cpu_pct))),
                ],
                Vec::new(),
            ),
        ),
    ];
    let mut names = vec!["samples.csv".to_string(), "summary.json".to_string()];
    for (name, svg) in charts {
        put(name, &svg)?;
        names.push(name.to_string());
    }
    Ok(names)
}

/// The summary's figures into the JSON line.
pub fn json_figures(json: &mut JsonLine, f: &Figures) {
    json.set("rss_idle_kib", f.rss_idle);
    json.set("rss_peak_kib", f.rss_peak);
    json.set("rss_peak_churn_kib", f.rss_peak_churn);
    json.set("rss_final_kib", f.rss_final);
    json.set("rss_end_slope_kib_s", round(f.rss_end_slope, 3));
    json.set("rss_churn_second_half_slope_kib_min", round(f.rss_churn_slope_kib_min, 1));
    json.set("fds_idle", f.fds_idle);
    json.set("fds_peak", f.fds_peak);
    json.set("fds_final", f.fds_final);
    json.set("fds_end_max", f.fds_end_max);
    json.set("node_sessions_peak", f.node_sessions_peak);
    json.set("client_sessions_peak", f.client_sessions_peak);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, phase: &'static str, rss: u64, fds: u64) -> Sample {
        Sample { t, phase, rss_kib: rss, fds, node_sessions: Some(0), ..Sample::default() }
    }

    #[test]
    fn flat_end_passes_and_growth_fails() {
        let limits = Limits { fd_slack: 16, rss_slope_kib_s: 8.0, fd_window: 20, rss_window: 30 };
        let mut v: Vec<Sample> = (0..10).map(|i| s(i as f64, "idle", 20_000, 30)).collect();
        v.extend((10..100).map(|i| s(i as f64, "churn", 60_000, 2_000)));
        let flat: Vec<Sample> = v.iter().cloned().chain((100..160).map(|i| s(i as f64, "cooldown", 50_000, 32))).collect();
        let f = figures(&flat, &limits);
        assert!(checks(&f, &limits, flat.last()).iter().all(|c| c.pass));
        assert_eq!((f.fds_idle, f.rss_peak, f.churn_start, f.churn_stop), (30, 60_000, 10.0, 100.0));
        let growing: Vec<Sample> =
            v.into_iter().chain((100..160).map(|i| s(i as f64, "cooldown", 40_000 + i * 20, 32 + (i - 100)))).collect();
        let f = figures(&growing, &limits);
        let failed: Vec<&str> = checks(&f, &limits, growing.last()).iter().filter(|c| !c.pass).map(|c| c.name).collect();
        assert_eq!(failed, vec!["descriptors back to the idle baseline", "RSS not growing at the end"]);
    }
}
