//! Egress accounting per subject (SPEC section 4): bytes sent to a subject's sessions in
//! fixed one-minute windows; crossing `egress.alert_bytes_per_minute` raises one alert per
//! window (log event and metric) and, with `action: disconnect`, closes the subject's
//! sessions with 4003, and again every session of that subject that is sent anything
//! more in the same window (a reconnect does not buy a fresh allowance).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Window {
    minute: u64,
    bytes: u64,
    alerted: bool,
}

pub struct EgressMeter {
    shards: Vec<Mutex<HashMap<String, Window>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for EgressMeter {
    fn default() -> Self {
        EgressMeter { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: Default::default() }
    }
}

/// Where a subject stands after [`EgressMeter::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    Under,
    /// The total just crossed the threshold: the window's one alert.
    Crossed,
    /// Over the threshold since an earlier write of this window.
    Over,
}

impl EgressMeter {
    /// Adds `bytes` for `subject` in the window `minute`: [`Egress::Crossed`] exactly once
    /// per window, when the total first exceeds `threshold`, then [`Egress::Over`].
    pub fn add(&self, subject: &str, bytes: u64, threshold: u64, minute: u64) -> Egress {
        let shard = &self.shards[(self.hasher.hash_one(subject) as usize) % SHARDS];
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 50_000 {
            m.retain(|_, w| w.minute == minute);
        }
        let w = match m.get_mut(subject) {
            Some(w) => w,
            None => m.entry(subject.to_owned()).or_insert(Window { minute, bytes: 0, alerted: false }),
        };
        if w.minute != minute {
            *w = Window { minute, bytes: 0, alerted: false };
        }
        w.bytes = w.bytes.saturating_add(bytes);
        match (w.bytes > threshold, w.alerted) {
            (false, _) => Egress::Under,
            (true, false) => {
                w.alerted = true;
                Egress::Crossed
            }
            (true, true) => Egress::Over,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_window_then_over() {
        let m = EgressMeter::default();
        assert_eq!(m.add("a", 60, 100, 1), Egress::Under);
        assert_eq!(m.add("a", 60, 100, 1), Egress::Crossed);
        assert_eq!(m.add("a", 1, 100, 1), Egress::Over, "already alerted in this window, still over");
        assert_eq!(m.add("b", 60, 100, 1), Egress::Under, "subjects are separate");
        assert_eq!(m.add("a", 60, 100, 2), Egress::Under, "a new window starts from zero");
        assert_eq!(m.add("a", 60, 100, 2), Egress::Crossed);
    }
}
