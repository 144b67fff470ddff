//! Since when each node has been off the fleet's version, for `GetPolicyStatus`.
//!
//! "Since" is the controller's memory: the start of the push a node missed (a push result
//! that was not `ok`), else the first time this controller saw the node off the fleet's
//! version. It is kept per node until the node is seen `ok` again; a restarted controller
//! starts from what it sees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use palisade_proto::controller::v1 as pb;

/// How a node's version compares with the fleet's.
pub fn state_of(node: Option<u64>, fleet: u64) -> &'static str {
    match node {
        None => "unreachable",
        Some(v) if v == fleet => "ok",
        Some(v) if v < fleet => "lagging",
        Some(_) => "diverged",
    }
}

#[derive(Default)]
pub struct LagTracker {
    /// Node id -> since when it is not `ok` (Unix ms).
    since: Mutex<HashMap<String, u64>>,
    /// Node id -> the last version it reported (push result or status) and when.
    seen: Mutex<HashMap<String, (u64, Instant)>>,
}

impl LagTracker {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seen_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A push that started at `started_ms`: a node that did not apply it lags since then
    /// (unless it already lagged), one that did is `ok`.
    pub fn pushed(&self, started_ms: u64, results: &[pb::NodeResult]) {
        let mut m = self.map();
        for r in results {
            if r.version != 0 {
                self.saw(&r.node_id, r.version);
            }
            if r.ok {
                m.remove(&r.node_id);
            } else {
                m.entry(r.node_id.clone()).or_insert(started_ms);
            }
        }
    }

    /// A node reported serving `version`.
    pub fn saw(&self, node_id: &str, version: u64) {
        self.seen_map().insert(node_id.to_owned(), (version, Instant::now()));
    }

    /// The last version a node reported here, and when.
    pub fn last_seen(&self, node_id: &str) -> Option<(u64, Instant)> {
        self.seen_map().get(node_id).copied()
    }

    /// What was seen of one node now; returns since when it is off (0: `ok`).
    pub fn observed(&self, node_id: &str, ok: bool, now_ms: u64) -> u64 {
        let mut m = self.map();
        if ok {
            m.remove(node_id);
            0
        } else {
            *m.entry(node_id.to_owned()).or_insert(now_ms)
        }
    }

    /// Forgets nodes no longer registered.
    pub fn retain(&self, registered: &[String]) {
        self.map().retain(|id, _| registered.contains(id));
        self.seen_map().retain(|id, _| registered.contains(id));
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_compare_with_the_fleet() {
        assert_eq!(state_of(Some(5), 5), "ok");
        assert_eq!(state_of(Some(4), 5), "lagging");
        assert_eq!(state_of(Some(6), 5), "diverged");
        assert_eq!(state_of(None, 5), "unreachable");
    }

    #[test]
    fn a_missed_push_dates_the_lag_until_the_node_is_ok() {
        let t = LagTracker::default();
        let res = |id: &str, ok: bool| pb::NodeResult { node_id: id.into(), ok, error: String::new(), version: 0 };
        t.pushed(1_000, &[res("a", true), res("b", false)]);
        assert_eq!(t.observed("b", false, 5_000), 1_000, "since the push it missed");
        t.pushed(2_000, &[res("b", false)]);
        assert_eq!(t.observed("b", false, 6_000), 1_000, "the first miss counts");
        assert_eq!(t.observed("a", false, 7_000), 7_000, "first seen off now");
        assert_eq!(t.observed("b", true, 8_000), 0);
        assert_eq!(t.observed("b", false, 9_000), 9_000, "a new lag starts fresh");
        t.retain(&["a".into()]);
        assert_eq!(t.observed("b", false, 10_000), 10_000);
    }
}
