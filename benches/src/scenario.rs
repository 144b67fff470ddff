//! What the scenarios share: the fixture, the client, and starting the servers.

pub mod bars;
pub mod bridge;
pub mod echo;
pub mod fleet;
pub mod handshake;
pub mod memory;
pub mod nodes;
pub mod offload;
pub mod peers;
pub mod reference;
pub mod soak;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bare::Http;
use crate::client::Client;
use crate::fixture::Fixture;
use crate::proc::{CpuDelta, Server};
use crate::report::{JsonLine, median, round};
use crate::{BaselineChoice, Common};

/// The kinds of server a scenario compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Palisade,
    /// Palisade exporting OTLP to the receiver, and the same without export (`--otel`).
    PalisadeOtel,
    PalisadeOff,
    /// Palisade with its cache of verified tokens off (`handshake --no-cache-too`).
    PalisadeNoCache,
    Bare(Http),
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Kind::Palisade => "palisade".into(),
            Kind::PalisadeOtel => "palisade-otel".into(),
            Kind::PalisadeOff => "palisade-off".into(),
            Kind::PalisadeNoCache => "palisade-no-cache".into(),
            Kind::Bare(h) => format!("bare-{}", h.name()),
        }
    }
}

/// Palisade first, then the baselines asked for.
pub fn kinds(c: &Common) -> Vec<Kind> {
    if c.otel {
        // Export on first: the summary's ratios are "first / other".
        return vec![Kind::PalisadeOtel, Kind::PalisadeOff];
    }
    let mut k = vec![Kind::Palisade];
    match c.baseline {
        BaselineChoice::Hyper => k.push(Kind::Bare(Http::Hyper)),
        BaselineChoice::Raw => k.push(Kind::Bare(Http::Raw)),
        BaselineChoice::Both => k.extend([Kind::Bare(Http::Hyper), Kind::Bare(Http::Raw)]),
    }
    k
}

/// Round `r` visits the servers in a rotated order, so that neither always runs first
/// (the machine's noise drifts).
pub fn rotated<T: Copy>(items: &[T], r: usize) -> Vec<T> {
    let n = items.len().max(1);
    (0..items.len()).map(|i| items[(i + r) % n]).collect()
}

pub struct Setup {
    pub fixture: Fixture,
    pub client: Arc<Client>,
    /// Where the palisade binary came from, and the copy that runs.
    pub palisade_bin: PathBuf,
    pub palisade_copy: PathBuf,
    pub ticks_per_second: u64,
    /// The OTLP receiver of `--otel` and its endpoint.
    otlp: Option<(Receiver, String)>,
}

impl Setup {
    pub fn new(c: &Common, tokens: usize) -> anyhow::Result<Setup> {
        let palisade_bin = match &c.palisade_bin {
            Some(p) => p.clone(),
            None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/palisade")),
        };
        if !palisade_bin.is_file() {
            bail!("{} not found: build it first with `cargo build --release -p palisade` (or pass --palisade-bin)", palisade_bin.display());
        }
        let fixture = Fixture::new(c.keep_files)?;
        // One binary for the whole invocation, even if the workspace is rebuilt meanwhile.
        let copy = fixture.dir.path().join("palisade");
        std::fs::copy(&palisade_bin, &copy).with_context(|| format!("cannot copy {}", palisade_bin.display()))?;
        let palisade_bin = palisade_bin.canonicalize()?;
        if c.keep_files {
            println!("files kept in {}", fixture.dir.path().display());
        }
        let client = Client::new(&fixture.ca_pem, c.sources, fixture.bearer_tokens(tokens)?)?;
        let otlp = if c.otel { Some(otlp_receiver(&fixture.dir.path().join("otlp.jsonl"))?) } else { None };
        Ok(Setup { fixture, client, palisade_bin, palisade_copy: copy, ticks_per_second: crate::proc::clock_ticks_per_second(), otlp })
    }

    /// Starts one server on a free loopback port and waits until a real upgrade succeeds.
    pub async fn start(&self, kind: Kind) -> anyhow::Result<Server> {
        let port = crate::proc::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = self.fixture.dir.path().join(format!("{}-{port}.log", kind.name()));
        let server = match kind {
            Kind::Palisade | Kind::PalisadeOtel | Kind::PalisadeOff | Kind::PalisadeNoCache => {
                let cfg = if kind == Kind::PalisadeNoCache {
                    self.fixture.node_config_no_cache(port)?
                } else {
                    self.fixture.node_config(port)?
                };
                let args = vec!["node".to_string(), "--config".into(), cfg.display().to_string()];
                let env = match (&self.otlp, kind) {
                    (Some((_, endpoint)), Kind::PalisadeOtel) => vec![
                        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint.clone()),
                        // The SDK's defaults, but metrics every 5 s so their export is measured too.
                        ("OTEL_METRIC_EXPORT_INTERVAL".to_string(), "5000".to_string()),
                    ],
                    _ => Vec::new(),
                };
                Server::spawn_with_env(&kind.name(), &self.palisade_copy, &args, &log, addr, &env)?
            }
            Kind::Bare(http) => {
                let me = std::env::current_exe().context("cannot find this executable")?;
                let args = vec![
                    "bare-server".to_string(),
                    "--port".into(),
                    port.to_string(),
                    "--cert".into(),
                    self.fixture.cert.display().to_string(),
                    "--key".into(),
                    self.fixture.key.display().to_string(),
                    "--http".into(),
                    http.name().into(),
                ];
                Server::spawn(&kind.name(), &me, &args, &log, addr)?
            }
        };
        self.ready(server, &self.client).await
    }

    /// Waits until `client` gets a real upgrade from `server` (30 s at most), and checks
    /// that the pid is the server's own.
    pub async fn ready(&self, mut server: Server, client: &Client) -> anyhow::Result<Server> {
        let addr = server.addr;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            server.check_alive()?;
            match client.open(addr).await {
                Ok(ws) => {
                    ws.close().await.map_err(|e| anyhow::anyhow!("{}: first session: {e}", server.name))?;
                    break;
                }
                Err(e) if Instant::now() > deadline => bail!("{} not ready after 30 s: {e} (log: {})", server.name, server.log.display()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // The pid must be the server's own (the shell has exec'ed it).
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap_or_default();
        if comm.trim() == "sh" {
            bail!("{}: pid {} is still the shell", server.name, server.pid());
        }
        Ok(server)
    }
}

/// Starts `tests/otlp_receiver.py` on a free port (it prints `port N`).
fn otlp_receiver(out: &std::path::Path) -> anyhow::Result<(Receiver, String)> {
    use std::io::BufRead as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/otlp_receiver.py");
    let mut child = std::process::Command::new("python3")
        .args([script, "--port", "0", "--out", &out.display().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("python3 tests/otlp_receiver.py (scripts/install-deps.sh installs opentelemetry-proto and grpcio)")?;
    let stdout = child.stdout.take().context("receiver stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line.strip_prefix("port ").and_then(|p| p.trim().parse().ok()).with_context(|| format!("receiver said {line:?}"))?;
    Ok((Receiver(child), format!("http://127.0.0.1:{port}")))
}

/// The receiver process, killed (by its own pid) with the scenario.
struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The header of every scenario's output.
pub fn banner(scenario: &str, setup: &Setup, servers: &[Server], detail: &str) {
    println!("palisade-bench {scenario}: {detail}");
    println!(
        "  machine: {} CPUs, CLK_TCK {}; client sources 127.0.0.2..; palisade binary {}",
        crate::proc::cpus(),
        setup.ticks_per_second,
        setup.palisade_bin.display()
    );
    for s in servers {
        println!("  server {:<11} pid {:<7} {}", s.name, s.pid(), s.addr);
    }
    println!("  command: {}", crate::command_line());
}

/// The open-file soft limit must cover `needed` descriptors.
pub fn check_open_files(needed: u64) -> anyhow::Result<()> {
    if let Some(limit) = crate::proc::open_file_limit()
        && limit < needed
    {
        bail!("this process may open {limit} files but needs about {needed}: run `ulimit -n {needed}` (or up to `ulimit -Hn`) first");
    }
    Ok(())
}

/// One server's measurements in one round.
#[derive(Default)]
pub struct Tally {
    pub cpu_s: f64,
    pub tick_s: f64,
    pub ops: usize,
    pub wall: Duration,
    pub refused: usize,
    pub failed: usize,
    pub measurements: usize,
    pub precise: usize,
}

impl Tally {
    pub fn add_cpu(&mut self, d: &CpuDelta) {
        self.cpu_s += d.seconds;
        self.tick_s += d.tick_seconds;
        self.measurements += 1;
        self.precise += usize::from(d.precise);
    }

    pub fn us_per_op(&self) -> f64 {
        if self.ops == 0 { f64::NAN } else { self.cpu_s * 1e6 / self.ops as f64 }
    }
}

/// Prints the summary of a CPU-per-operation scenario and returns its JSON line (without
/// the scenario-specific fields). `tallies[round][server]`, server 0 being palisade.
///
/// The headline ratio is the median over rounds of palisade / baseline within the round
/// (measured over the same interleaved seconds), against the baseline with the lowest
/// median cost (the strictest bar); the ratio of the medians is given too.
pub fn summarize(scenario: &str, unit: &str, decimals: i32, names: &[String], tallies: &[Vec<Tally>], target: f64) -> JsonLine {
    let rounds = tallies.len();
    let per_server = |i: usize| -> Vec<f64> { tallies.iter().map(|r| r[i].us_per_op()).collect() };
    let medians: Vec<f64> = (0..names.len()).map(|i| median(&per_server(i))).collect();
    let paired = |b: usize| -> f64 {
        let ratios: Vec<f64> = tallies.iter().map(|r| r[0].us_per_op() / r[b].us_per_op()).collect();
        median(&ratios)
    };
    let primary = (1..names.len()).min_by(|&a, &b| medians[a].total_cmp(&medians[b])).unwrap_or(0);
    let w = decimals as usize;
    println!("summary (medians over {rounds} rounds):");
    println!("  {:<12} {:>9.w$} us/{unit}", names[0], medians[0]);
    let ratio = paired(primary);
    let mut json = JsonLine::default();
    json.set("scenario", scenario);
    json.set("palisade_us", round(medians[0], decimals + 1));
    json.set("baseline_us", round(medians[primary], decimals + 1));
    json.set("ratio", round(ratio, 3));
    json.set("rounds", rounds);
    json.set("target", target);
    json.set("baseline", names[primary].clone());
    json.set("ratio_of_medians", round(medians[0] / medians[primary], 3));
    for b in 1..names.len() {
        println!(
            "  {:<12} {:>9.w$} us/{unit}  palisade/{}: {:.3} (median of per-round ratios), {:.3} (ratio of medians)",
            names[b],
            medians[b],
            names[b],
            paired(b),
            medians[0] / medians[b]
        );
        let key = names[b].replace('-', "_");
        json.set(format!("{key}_us"), round(medians[b], decimals + 1));
        json.set(format!("{key}_ratio"), round(paired(b), 3));
    }
    let verdict = if ratio <= target { "meets" } else { "MISSES" };
    if names[0] == "palisade-otel" {
        println!("  --otel: {ratio:.3} is the cost of OTLP export (export on / export off); the SPEC target does not apply");
        json.set("otel_ratio", round(ratio, 3));
    } else {
        println!("  ratio vs {} (the cheapest baseline): {ratio:.3}; SPEC target <= {target}: {verdict}", names[primary]);
    }
    let all = tallies.iter().flatten();
    let (precise, measurements): (usize, usize) = all.clone().fold((0, 0), |(p, m), t| (p + t.precise, m + t.measurements));
    let (cpu, ticks): (f64, f64) = all.fold((0.0, 0.0), |(c, k), t| (c + t.cpu_s, k + t.tick_s));
    println!(
        "  server CPU: {precise} of {measurements} readings from per-thread schedstat (ns), the rest from /proc/<pid>/stat ticks; \
         total {cpu:.2} s (stat ticks: {ticks:.2} s)"
    );
    json
}
