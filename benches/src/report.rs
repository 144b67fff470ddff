//! Tables, medians and the final JSON line.

/// The median (the mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// A plain text table, columns right-aligned except the first two.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut width: Vec<usize> = self.header.iter().map(String::len).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = width.get_mut(i) {
                    *w = (*w).max(c.len());
                }
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let w = width.get(i).copied().unwrap_or(0);
                    if i < 2 { format!("{c:<w$}") } else { format!("{c:>w$}") }
                })
                .collect();
            println!("  {}", parts.join("  ").trim_end());
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
    }
}

/// One server's per-round values.
pub struct Series {
    pub server: String,
    pub values: Vec<f64>,
}

/// The final JSON line, its keys in the order they were first set.
#[derive(Default)]
pub struct JsonLine(Vec<(String, serde_json::Value)>);

impl JsonLine {
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_f64())
    }
}

impl std::fmt::Display for JsonLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{v}", serde_json::Value::from(k.as_str()))?;
        }
        f.write_str("}")
    }
}

/// Rounds a float for the JSON line (two decimals; three for ratios).
pub fn round(x: f64, decimals: i32) -> serde_json::Value {
    if !x.is_finite() {
        return serde_json::Value::Null;
    }
    let f = 10f64.powi(decimals);
    serde_json::json!((x * f).round() / f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn json_line_keeps_the_order_of_its_keys() {
        let mut j = JsonLine::default();
        j.set("scenario", "echo");
        j.set("ratio", round(1.23456, 3));
        j.set("scenario", "handshake");
        j.set("command", "a \"b\"");
        assert_eq!(j.to_string(), r#"{"scenario":"handshake","ratio":1.235,"command":"a \"b\""}"#);
        assert_eq!(j.get_f64("ratio"), Some(1.235));
    }
}
