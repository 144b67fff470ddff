//! One server of the `peers` scenario and its process tree: palisade and Envoy and
//! HAProxy are one process each, nginx a master and its workers. CPU time and RSS are
//! summed over the tree (the root and its direct children, read live from `/proc`), and
//! the children are killed (by their own pids) with the root.

use std::collections::HashMap;

use crate::proc::{CpuDelta, Server, cpu_ticks};

pub struct Target {
    pub name: String,
    /// What it checks at the upgrade, and its version.
    pub checks: String,
    pub version: String,
    pub server: Server,
}

/// CPU time of a process tree at one instant: ticks of `/proc/<pid>/stat`, and each live
/// thread's nanoseconds from `schedstat` (see [`crate::proc::CpuSample`]).
pub struct TreeCpu {
    ticks: u64,
    threads: HashMap<u32, u64>,
}

/// The pids whose parent is `root`.
fn children(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok())))
                == Some(root)
        })
        .collect()
}

impl Target {
    pub fn pids(&self) -> Vec<u32> {
        let root = self.server.pid();
        let mut v = vec![root];
        v.extend(children(root));
        v
    }

    pub fn cpu(&self) -> anyhow::Result<TreeCpu> {
        let mut t = TreeCpu { ticks: 0, threads: HashMap::new() };
        for pid in self.pids() {
            t.ticks += cpu_ticks(pid)?;
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
                if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat"))
                    && let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
                {
                    t.threads.insert(tid, ns);
                }
            }
        }
        Ok(t)
    }

    /// VmRSS of the tree, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| {
                let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                text.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl TreeCpu {
    pub fn since(&self, before: &TreeCpu, ticks_per_second: u64) -> CpuDelta {
        let tick_seconds = self.ticks.saturating_sub(before.ticks) as f64 / ticks_per_second.max(1) as f64;
        let precise = before.threads.keys().all(|t| self.threads.contains_key(t));
        let seconds = if precise {
            self.threads.iter().map(|(t, v)| v.saturating_sub(before.threads.get(t).copied().unwrap_or(0))).sum::<u64>() as f64 / 1e9
        } else {
            tick_seconds
        };
        CpuDelta { seconds, tick_seconds, precise }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // nginx's master respawns a killed worker, and its workers outlive a killed master:
        // note the children, kill the root, then each child, every one by its own pid.
        let root = self.server.pid();
        let kids = children(root);
        if kids.is_empty() {
            return;
        }
        let kill = |pid: u32| {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        };
        kill(root);
        for pid in kids {
            kill(pid);
        }
    }
}
