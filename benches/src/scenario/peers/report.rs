//! The `peers` tables, summary and JSON line: per server the medians over rounds, and
//! palisade / peer (the median of the per-round ratios for the CPU figures; below 1,
//! palisade is cheaper or faster).

use std::time::Duration;

use super::{PeersArgs, Round};
use crate::report::{JsonLine, Table, median, round};

/// The `q` quantile (nearest rank) of sorted `v`, in microseconds.
pub fn quantile_us(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e6
}

pub fn summary(
    all: &[Vec<Round>],
    names: &[String],
    versions: &[String],
    rss: &[f64],
    skipped: &[(String, String)],
    a: &PeersArgs,
    problems: usize,
) -> JsonLine {
    let mut table =
        Table::new(&["round", "server", "handshakes", "refused", "failed", "us/handshake", "messages", "us/message", "p50 us", "p99 us"]);
    for (r, round_) in all.iter().enumerate() {
        for (i, s) in round_.iter().enumerate() {
            table.row(vec![
                (r + 1).to_string(),
                names[i].clone(),
                s.handshake.ops.to_string(),
                s.handshake.refused.to_string(),
                s.handshake.failed.to_string(),
                format!("{:.1}", s.handshake.us_per_op()),
                s.message.ops.to_string(),
                format!("{:.2}", s.message.us_per_op()),
                format!("{:.1}", s.p50_us),
                format!("{:.1}", s.p99_us),
            ]);
        }
    }
    table.print();
    let med = |f: &dyn Fn(&[Round]) -> f64| median(&all.iter().map(|r| f(r)).collect::<Vec<_>>());
    let hs = |i: usize| med(&|r| r[i].handshake.us_per_op());
    let msg = |i: usize| med(&|r| r[i].message.us_per_op());
    let p50 = |i: usize| med(&|r| r[i].p50_us);
    let p99 = |i: usize| med(&|r| r[i].p99_us);
    println!(
        "summary (medians over {} rounds; ratios palisade/peer, the median of per-round ratios: below 1 = palisade cheaper):",
        all.len()
    );
    let mut out = Table::new(&[
        "server",
        "us/handshake",
        "us/message",
        "KiB/idle conn",
        "p50 us",
        "p99 us",
        "handshake ratio",
        "message ratio",
        "RSS ratio",
    ]);
    let mut json = JsonLine::default();
    json.set("scenario", "peers");
    for i in 0..names.len() {
        let (hr, mr, rr) = if i == 0 {
            (String::from("-"), String::from("-"), String::from("-"))
        } else {
            let h = med(&|r| r[0].handshake.us_per_op() / r[i].handshake.us_per_op());
            let m = med(&|r| r[0].message.us_per_op() / r[i].message.us_per_op());
            let key = names[i].replace('-', "_");
            json.set(format!("{key}_handshake_ratio"), round(h, 3));
            json.set(format!("{key}_message_ratio"), round(m, 3));
            json.set(format!("{key}_rss_ratio"), round(rss[0] / rss[i], 3));
            (format!("{h:.2}"), format!("{m:.2}"), format!("{:.2}", rss[0] / rss[i]))
        };
        let key = names[i].replace('-', "_");
        json.set(format!("{key}_handshake_us"), round(hs(i), 1));
        json.set(format!("{key}_message_us"), round(msg(i), 2));
        json.set(format!("{key}_idle_kib"), round(rss[i], 2));
        json.set(format!("{key}_p50_us"), round(p50(i), 1));
        json.set(format!("{key}_p99_us"), round(p99(i), 1));
        out.row(vec![
            names[i].clone(),
            format!("{:.1}", hs(i)),
            format!("{:.2}", msg(i)),
            format!("{:.2}", rss[i]),
            format!("{:.1}", p50(i)),
            format!("{:.1}", p99(i)),
            hr,
            mr,
            rr,
        ]);
    }
    out.print();
    for (name, why) in skipped {
        println!("  {name}: skipped ({why})");
        json.set(format!("{}_skipped", name.replace('-', "_")), why.clone());
    }
    println!("  problems (refused or failed handshakes, session errors): {problems}");
    json.set("versions", versions.join("; "));
    json.set("rounds", all.len());
    json.set("handshakes", a.handshakes);
    json.set("messages", a.messages);
    json.set("connections", a.connections);
    json.set("idle", a.idle);
    json.set("failed", problems);
    json.set("command", crate::command_line());
    json
}
