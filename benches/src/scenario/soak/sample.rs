//! One sample a second: the node's RSS, open descriptors, threads and CPU from `/proc`,
//! its live sessions and handshake counters from its control plane (`GetStats`), and
//! what the load did in that second (sessions, messages, refusals, handshake latency).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_proto::node::v1::GetStatsRequest;
use palisade_proto::node::v1::node_control_client::NodeControlClient;
use tonic::transport::Channel;

use super::load::Stats;

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: f64,
    pub phase: &'static str,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub cpu_pct: f64,
    /// The node's registry (`GetStats.active_connections`); `None` when it did not answer.
    pub node_sessions: Option<u64>,
    pub node_accepted: Option<u64>,
    pub node_refused: Option<u64>,
    pub client_sessions: i64,
    pub stalled: i64,
    pub opened: u64,
    pub closed: u64,
    pub messages: u64,
    pub refused: u64,
    pub unexpected: u64,
    pub handshakes: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub const CSV_HEADER: &str = "t_s,phase,rss_kib,fds,threads,node_cpu_pct,node_sessions,client_sessions,stalled_sockets,\
opened_per_s,closed_per_s,messages_per_s,refused_per_s,unexpected_total,handshakes_in_second,handshake_p50_ms,handshake_p99_ms,\
node_handshakes_accepted,node_handshakes_refused";

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl Sample {
    pub fn csv(&self) -> String {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
        format!(
            "{:.1},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.t,
            self.phase,
            self.rss_kib,
            self.fds,
            self.threads,
            self.cpu_pct,
            opt(self.node_sessions),
            self.client_sessions,
            self.stalled,
            self.opened,
            self.closed,
            self.messages,
            self.refused,
            self.unexpected,
            self.handshakes,
            ms(self.p50_ms),
            ms(self.p99_ms),
            opt(self.node_accepted),
            opt(self.node_refused),
        )
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
pub fn quantile(v: &[u32], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(f64::from(v[i]) / 1000.0)
}

/// Reads the node and the load's counters; keeps what it needs for per-second deltas.
pub struct Probe {
    pid: u32,
    ticks_per_second: u64,
    control: std::net::SocketAddr,
    client: Option<NodeControlClient<Channel>>,
    last_ticks: Option<(u64, std::time::Instant)>,
    last: [u64; 4],
    pub stats_errors: u64,
}

impl Probe {
    pub fn new(pid: u32, ticks_per_second: u64, control: std::net::SocketAddr) -> Probe {
        Probe { pid, ticks_per_second, control, client: None, last_ticks: None, last: [0; 4], stats_errors: 0 }
    }

    /// `GetStats` over one kept channel (plain text: the node runs `--insecure-control-plane`
    /// on loopback); at most 900 ms.
    async fn stats(&mut self) -> Option<palisade_proto::node::v1::Stats> {
        if self.client.is_none() {
            let endpoint = Channel::from_shared(format!("http://{}", self.control)).ok()?.connect_timeout(Duration::from_millis(500));
            self.client = Some(NodeControlClient::new(endpoint.connect().await.ok()?));
        }
        let client = self.client.as_mut()?;
        match tokio::time::timeout(Duration::from_millis(900), client.get_stats(GetStatsRequest {})).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => {
                self.client = None;
                None
            }
        }
    }

    /// One sample at `t` seconds since the start. Descriptors are counted before the
    /// control call, so that its connection (one, kept open) is all it adds.
    pub async fn sample(&mut self, t: f64, phase: &'static str, stats: &Arc<Stats>) -> anyhow::Result<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> u64 {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let (rss_kib, threads) = (field("VmRSS:"), field("Threads:"));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count() as u64;
        let ticks = crate::proc::cpu_ticks(self.pid)?;
        let now = std::time::Instant::now();
        let cpu_pct = match self.last_ticks {
            Some((t0, i0)) => {
                let secs = now.duration_since(i0).as_secs_f64().max(1e-3);
                (ticks.saturating_sub(t0)) as f64 / self.ticks_per_second.max(1) as f64 / secs * 100.0
            }
            None => 0.0,
        };
        self.last_ticks = Some((ticks, now));
        let node = self.stats().await;
        if node.is_none() {
            self.stats_errors += 1;
        }
        let mut latencies = std::mem::take(&mut *stats.latency_second.lock().unwrap_or_else(|p| p.into_inner()));
        latencies.sort_unstable();
        let cum = [
            stats.opened.load(Ordering::Relaxed),
            stats.closed.load(Ordering::Relaxed),
            stats.messages.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
        ];
        let delta: Vec<u64> = cum.iter().zip(self.last).map(|(c, l)| c.saturating_sub(l)).collect();
        self.last = cum;
        Ok(Sample {
            t,
            phase,
            rss_kib,
            fds,
            threads,
            cpu_pct,
            node_sessions: node.as_ref().map(|s| s.active_connections),
            node_accepted: node.as_ref().map(|s| s.handshakes_accepted),
            node_refused: node.as_ref().map(|s| s.handshakes_refused),
            client_sessions: stats.live.load(Ordering::Relaxed),
            stalled: stats.stalled_live.load(Ordering::Relaxed),
            opened: delta[0],
            closed: delta[1],
            messages: delta[2],
            refused: delta[3],
            unexpected: stats.unexpected.load(Ordering::Relaxed),
            handshakes: latencies.len(),
            p50_ms: quantile(&latencies, 0.5),
            p99_ms: quantile(&latencies, 0.99),
        })
    }
}

/// Least-squares slope of (t, y), in y per second; 0 with fewer than two points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mt, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
    let den: f64 = points.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    if den > 0.0 { num / den } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_and_quantiles() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 7.0), (1.0, 7.0)]), 0.0);
        assert_eq!(slope(&[(0.0, 7.0)]), 0.0);
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn csv_rows_match_the_header() {
        let s = Sample { phase: "churn", ..Sample::default() };
        assert_eq!(s.csv().split(',').count(), CSV_HEADER.split(',').count());
    }
}
