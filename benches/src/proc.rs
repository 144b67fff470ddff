//! Server processes: spawned with the open-file limit raised to the hard limit, their CPU
//! time and RSS read from `/proc/<pid>`, killed (by their own pid) when dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A server process this bench started.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

/// Environment variables of the node that must not leak from the caller's shell.
const NODE_ENV: &[&str] = &[
    "PALISADE_CONFIG",
    "PALISADE_NODE_ID",
    "PALISADE_CLUSTER",
    "PALISADE_WSS_ADDR",
    "PALISADE_CONTROL_ADDR",
    "PALISADE_TLS_CERT",
    "PALISADE_TLS_KEY",
    "PALISADE_POLICY_FILE",
    "PALISADE_CONTROL_CERT",
    "PALISADE_CONTROL_KEY",
    "PALISADE_CONTROL_CA",
    "PALISADE_TRUSTED_PROXIES",
    "PALISADE_ETCD_ENDPOINTS",
    "RUST_LOG",
];

impl Server {
    /// Starts `program args` through `sh -c 'ulimit -n <hard>; exec ...'`, so the pid is
    /// the server's own once `exec` has run. Output goes to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path, addr: SocketAddr) -> anyhow::Result<Server> {
        Server::spawn_with_env(name, program, args, log, addr, &[])
    }

    /// `spawn` with `env` set. The caller's `OTEL_*` never leak into a server: only what
    /// `env` says is exported.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        addr: SocketAddr,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#).arg(program).args(args);
        for k in NODE_ENV {
            cmd.env_remove(k);
        }
        // The node's default log level, explicitly: the audit record of every handshake
        // is part of what it costs.
        cmd.env("PALISADE_LOG", "info");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().cloned());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Server { name: name.into(), addr, log: log.into(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}); its log ({}) ends with:\n{}", self.name, self.log.display(), tail.join("\n"));
        }
        Ok(())
    }

    /// The process's CPU time so far, both ways (see [`CpuSample`]).
    pub fn cpu(&self) -> anyhow::Result<CpuSample> {
        let pid = self.pid();
        let mut threads = HashMap::new();
        let dir = format!("/proc/{pid}/task");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
            let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            // A thread may end between the listing and the read: it is then missing.
            if let Ok(text) = std::fs::read_to_string(format!("{dir}/{tid}/schedstat"))
                && let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
            {
                threads.insert(tid, ns);
            }
        }
        Ok(CpuSample { ticks: cpu_ticks(pid)?, threads })
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let line = text.lines().find(|l| l.starts_with("VmRSS:")).with_context(|| format!("no VmRSS in {path}"))?;
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("bad VmRSS line in {path}: {line}"))
    }

    /// Kills the process (SIGKILL, by its pid) and reaps it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's CPU time at one instant, read two ways:
/// - `ticks`: utime + stime of `/proc/<pid>/stat`, every thread live or gone, in clock
///   ticks (10 ms at CLK_TCK 100);
/// - `threads`: each live thread's run time from `/proc/<pid>/task/<tid>/schedstat`, in
///   nanoseconds (the same scheduler accounting, without the tick rounding).
pub struct CpuSample {
    ticks: u64,
    threads: HashMap<u32, u64>,
}

/// CPU seconds between two samples.
pub struct CpuDelta {
    /// The best figure: from the per-thread nanoseconds when every thread of `before` is
    /// still alive in `after` (a thread that ended took its time with it), else from ticks.
    pub seconds: f64,
    /// From `/proc/<pid>/stat` ticks only, for comparison.
    pub tick_seconds: f64,
    pub precise: bool,
}

impl CpuSample {
    pub fn since(&self, before: &CpuSample, ticks_per_second: u64) -> CpuDelta {
        let tick_seconds = self.ticks.saturating_sub(before.ticks) as f64 / ticks_per_second.max(1) as f64;
        let precise = before.threads.keys().all(|t| self.threads.contains_key(t));
        let seconds = if precise {
            let ns: u64 = self.threads.iter().map(|(t, v)| v.saturating_sub(before.threads.get(t).copied().unwrap_or(0))).sum();
            ns as f64 / 1e9
        } else {
            tick_seconds
        };
        CpuDelta { seconds, tick_seconds, precise }
    }
}

/// utime + stime of `/proc/<pid>/stat` (fields 14 and 15), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = text.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("bad {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).with_context(|| format!("bad {path}"));
    Ok(num(11)? + num(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// A free loopback port (bound, read, released: the server binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The soft limit on open files of this process.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Settling pause after a phase, before the CPU or RSS is read again.
pub const SETTLE: Duration = Duration::from_millis(200);
