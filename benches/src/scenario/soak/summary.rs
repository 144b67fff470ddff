//! The end of a soak run: the checks, the summary printed and in `summary.json`, the
//! files written.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::bail;

use super::SoakArgs;
use super::load::Stats;
use super::sample::{Probe, Sample, quantile};
use super::verdict::{self, Check, Limits};
use crate::report::{JsonLine, round};

#[allow(clippy::too_many_arguments)]
pub fn summarize(
    a: &SoakArgs,
    churn: u64,
    out: &Path,
    csv: &str,
    samples: &[Sample],
    stats: &Stats,
    probe: &Probe,
    died: Option<String>,
    log: &Path,
) -> anyhow::Result<()> {
    let window = |n: u64| (a.cooldown.max(2) / 2).min(n) as usize;
    let limits = Limits { fd_slack: a.fd_slack, rss_slope_kib_s: a.rss_slope_kib, fd_window: window(20), rss_window: window(30) };
    let f = verdict::figures(samples, &limits);
    let mut checks = verdict::checks(&f, &limits, samples.last());
    let unexpected = stats.unexpected.load(Ordering::Relaxed);
    let errors = stats.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    checks.push(Check {
        name: "no unexpected error",
        pass: unexpected == 0,
        detail: format!("{unexpected} (first: {:?})", errors.first()),
    });
    checks.push(Check { name: "the node stayed up", pass: died.is_none(), detail: died.clone().unwrap_or_else(|| "yes".into()) });
    let answers = stats.answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let count = |prefix: &str| answers.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum::<u64>();
    let mix = [
        ("bad_token 403", a.bad_token_rate > 0.0),
        ("bad_origin 403", a.bad_origin_rate > 0.0),
        ("user_burst 429", a.burst_every > 0),
        ("ip_burst 429", a.ip_burst_every > 0),
        ("stall_", a.stall_rate > 0.0),
    ];
    let missing: Vec<&str> = mix.iter().filter(|(k, on)| *on && count(k) == 0).map(|(k, _)| *k).collect();
    checks.push(Check {
        name: "every kind of refusal happened",
        pass: missing.is_empty() || died.is_some(),
        detail: format!("missing: {missing:?}"),
    });
    let pass = checks.iter().all(|c| c.pass);

    let mut all = std::mem::take(&mut *stats.latency_all.lock().unwrap_or_else(|p| p.into_inner()));
    all.sort_unstable();
    let mut json = JsonLine::default();
    json.set("scenario", "soak");
    json.set("pass", pass);
    json.set("churn_seconds", churn);
    json.set("cooldown_seconds", a.cooldown);
    verdict::json_figures(&mut json, &f);
    json.set("sessions_opened", stats.opened.load(Ordering::Relaxed));
    json.set("sessions_closed", stats.closed.load(Ordering::Relaxed));
    json.set("messages_echoed", stats.messages.load(Ordering::Relaxed));
    json.set("refused", stats.refused.load(Ordering::Relaxed));
    json.set("answers", serde_json::to_value(&answers)?);
    json.set("bursts", stats.bursts.load(Ordering::Relaxed));
    json.set("bursts_rate_limited", stats.bursts_limited.load(Ordering::Relaxed));
    json.set("burst_accepted", stats.burst_accepted.load(Ordering::Relaxed));
    json.set("stall_close_max_ms", stats.stall_close_max_ms.load(Ordering::Relaxed));
    json.set("handshake_p50_ms", quantile(&all, 0.5).map_or(serde_json::Value::Null, |v| round(v, 2)));
    json.set("handshake_p99_ms", quantile(&all, 0.99).map_or(serde_json::Value::Null, |v| round(v, 2)));
    json.set("handshake_max_ms", quantile(&all, 1.0).map_or(serde_json::Value::Null, |v| round(v, 2)));
    json.set("unexpected", unexpected);
    json.set("stats_errors", probe.stats_errors);
    json.set("node_log_warnings", log_warnings(log));
    json.set("out", out.display().to_string());
    json.set("command", crate::command_line());
    let files = verdict::write(out, csv, samples, &f, &limits, &json)?;

    println!("summary:");
    println!(
        "  RSS KiB: idle {}, peak {} (churn alone {}), final {} (slope over the last {} s: {:.2} KiB/s; churn's second half: {:.1} KiB/min)",
        f.rss_idle, f.rss_peak, f.rss_peak_churn, f.rss_final, limits.rss_window, f.rss_end_slope, f.rss_churn_slope_kib_min
    );
    println!(
        "  descriptors: idle {}, churn peak {}, final {} (max over the last {} s: {})",
        f.fds_idle, f.fds_peak, f.fds_final, limits.fd_window, f.fds_end_max
    );
    println!(
        "  sessions: {} opened, {} closed, {} messages echoed; peak live {} (node) / {} (client)",
        stats.opened.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
        stats.messages.load(Ordering::Relaxed),
        f.node_sessions_peak,
        f.client_sessions_peak
    );
    println!("  handshake latency: p50 {:?} ms, p99 {:?} ms over {} handshakes", quantile(&all, 0.5), quantile(&all, 0.99), all.len());
    for (k, v) in &answers {
        println!("  answer {k}: {v}");
    }
    for e in &errors {
        println!("  unexpected: {e}");
    }
    for c in &checks {
        println!("  [{}] {}: {}", if c.pass { "pass" } else { "FAIL" }, c.name, c.detail);
    }
    println!("  files in {}: {}", out.display(), files.join(", "));
    println!("{json}");
    if !pass {
        bail!("soak failed");
    }
    Ok(())
}

/// Lines of the node's log at WARN or ERROR (the insecure control plane's warning is one).
fn log_warnings(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map_or(0, |t| t.lines().filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#)).count())
}

/// `target/soak/<UTC yyyymmdd-hhmmss>` of this workspace.
pub fn default_out() -> PathBuf {
    // RFC 3339 (2026-12-02T01:51:21Z) to 20261202-015121.
    let t = palisade_plane::cert::format_time(palisade_plane::cert::unix_now());
    let stamp = format!("{}-{}", t.get(..10).unwrap_or_default().replace('-', ""), t.get(11..19).unwrap_or_default().replace(':', ""));
    let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
    benches.parent().unwrap_or(benches).join("target/soak").join(stamp)
}
