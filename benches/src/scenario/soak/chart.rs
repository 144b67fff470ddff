//! Line charts over time as plain SVG (polylines, axes, a legend), no dependency: the
//! phases are shaded and the moment the churn stops is marked.

use std::fmt::Write as _;

pub struct Line {
    pub label: String,
    pub color: &'static str,
    /// One value per time of [`Chart::t`]; `None` leaves a gap.
    pub values: Vec<Option<f64>>,
}

pub struct Chart<'a> {
    pub title: String,
    pub y_label: String,
    pub t: &'a [f64],
    pub lines: Vec<Line>,
    /// Vertical markers: (time, label).
    pub marks: Vec<(f64, String)>,
    /// Horizontal reference lines: (value, label).
    pub levels: Vec<(f64, String)>,
    /// Shaded time spans: (from, to, label).
    pub spans: Vec<(f64, f64, String)>,
}

const W: f64 = 960.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 84.0;

/// 1, 2 or 5 times a power of ten, about `range / n`.
fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub fn render(c: &Chart) -> String {
    let t_max = c.t.iter().copied().fold(1.0, f64::max);
    let y_top = c.lines.iter().flat_map(|l| l.values.iter().flatten().copied()).chain(c.levels.iter().map(|l| l.0)).fold(0.0, f64::max);
    let y_step = nice_step(if y_top > 0.0 { y_top } else { 1.0 }, 5.0);
    let y_max = ((y_top / y_step).floor() + 1.0) * y_step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + t / t_max * pw;
    let y = |v: f64| TOP + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#, esc(&c.title));
    for (i, (from, to, text)) in c.spans.iter().enumerate() {
        let fill = if i % 2 == 0 { "#f1f1f1" } else { "#e6eef8" };
        let _ =
            writeln!(s, r#"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{fill}"/>"#, x(*from), (x(*to) - x(*from)).max(0.0));
        if x(*to) - x(*from) > 8.0 * text.len() as f64 {
            let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" fill="#666">{}</text>"##, x(*from) + 4.0, TOP + 14.0, esc(text));
        }
    }
    // Grid and axes.
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let _ = writeln!(s, r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##, LEFT + pw, y(v), y(v));
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, y(v) + 4.0, label(v));
        v += y_step;
    }
    let t_step = nice_step(t_max, 10.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(s, r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/>"##, x(t), x(t), TOP + ph, TOP + ph + 5.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, x(t), TOP + ph + 18.0, label(t));
        t += t_step;
    }
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text>"#, LEFT + pw / 2.0, TOP + ph + 36.0);
    let _ =
        writeln!(s, r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#, TOP + ph / 2.0, esc(&c.y_label));
    for (value, text) in &c.levels {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#c0392b" stroke-dasharray="6 4"/>"##,
            LEFT + pw,
            y(*value),
            y(*value)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#c0392b">{}</text>"##,
            LEFT + pw / 2.0,
            y(*value) - 4.0,
            esc(text)
        );
    }
    for (at, text) in &c.marks {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
            x(*at),
            x(*at),
            TOP + ph
        );
        // Left of the line when it is near the right edge.
        let (lx, anchor) = if x(*at) + 8.0 * text.len() as f64 > LEFT + pw { (x(*at) - 4.0, "end") } else { (x(*at) + 4.0, "start") };
        let _ = writeln!(s, r#"<text x="{lx:.1}" y="{:.1}" font-weight="bold" text-anchor="{anchor}">{}</text>"#, TOP + 30.0, esc(text));
    }
    for line in &c.lines {
        for segment in segments(c.t, &line.values) {
            let pts: Vec<String> = segment.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#, line.color, pts.join(" "));
        }
    }
    // Legend under the plot.
    let mut lx = LEFT;
    for line in &c.lines {
        let ly = H - 16.0;
        let _ =
            writeln!(s, r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/>"#, lx + 22.0, line.color);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 28.0, ly + 4.0, esc(&line.label));
        lx += 40.0 + 7.0 * line.label.len() as f64;
    }
    s.push_str("</svg>\n");
    s
}

/// The runs of present values, as (t, value) points.
fn segments(t: &[f64], values: &[Option<f64>]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for (t, v) in t.iter().zip(values) {
        match v {
            Some(v) if v.is_finite() => out.last_mut().map_or((), |s| s.push((*t, *v))),
            _ if out.last().is_some_and(|s| !s.is_empty()) => out.push(Vec::new()),
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(660.0, 10.0), 100.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }

    #[test]
    fn gaps_split_the_line() {
        let s = segments(&[0.0, 1.0, 2.0, 3.0], &[Some(1.0), None, Some(2.0), Some(3.0)]);
        assert_eq!(s, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
    }

    #[test]
    fn renders_an_svg() {
        let t = [0.0, 1.0, 2.0];
        let c = Chart {
            title: "RSS".into(),
            y_label: "MiB".into(),
            t: &t,
            lines: vec![Line { label: "rss".into(), color: "#1f77b4", values: vec![Some(1.0), Some(2.0), Some(2.0)] }],
            marks: vec![(1.0, "churn stops".into())],
            levels: vec![(2.5, "peak".into())],
            spans: vec![(0.0, 1.0, "churn".into())],
        };
        let svg = render(&c);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("churn stops") && svg.ends_with("</svg>\n"));
    }
}
