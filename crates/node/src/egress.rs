//! Egress accounting per subject (SPEC section 4): bytes sent to a subject's sessions in
//! fixed one-minute windows; crossing `egress.alert_bytes_per_minute` raises one alert per
//! window (log event and metric) and, with `action: disconnect`, closes the subject's
//! sessions with 4003.

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

impl EgressMeter {
    /// Adds `bytes` for `subject` in the window `minute`. Returns true exactly once per
    /// window: when the total first exceeds `threshold`.
    pub fn add(&self, subject: &str, bytes: u64, threshold: u64, minute: u64) -> bool {
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
        if w.bytes > threshold && !w.alerted {
            w.alerted = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_window() {
        let m = EgressMeter::default();
        assert!(!m.add("a", 60, 100, 1));
        assert!(m.add("a", 60, 100, 1));
        assert!(!m.add("a", 500, 100, 1), "already alerted in this window");
        assert!(!m.add("b", 60, 100, 1), "subjects are separate");
        assert!(!m.add("a", 60, 100, 2), "a new window starts from zero");
        assert!(m.add("a", 60, 100, 2));
    }
}
