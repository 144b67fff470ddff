//! The soak's load, every part at a fixed rate until the churn stops: sessions opened
//! (each lives a random time, echoes a message every interval, then closes), and the
//! refusal mix: forged and expired tokens, a foreign Origin, bursts for one subject and
//! from one address (rate-limited), stalled sockets the node must close.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_policy::mint::SigningKey;
use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::wire::{Answer, SoakWs, Stall, Wire};
use crate::client::masked_frame;
use crate::fixture::ORIGIN;

/// The Origin of the refused-origin handshakes (the policy allows only [`ORIGIN`]).
pub const FOREIGN_ORIGIN: &str = "https://evil.example";

/// Rates and sizes of the load.
#[derive(Clone, Debug)]
pub struct Plan {
    pub rate: f64,
    pub min_life: Duration,
    pub max_life: Duration,
    pub message_interval: Duration,
    pub size: usize,
    pub subjects: usize,
    pub bad_token_rate: f64,
    pub bad_origin_rate: f64,
    pub burst_every: Duration,
    pub burst_size: usize,
    pub ip_burst_every: Duration,
    pub ip_burst_size: usize,
    pub stall_rate: f64,
    /// How long a stalled socket waits for the node to close it before that is an error,
    /// and how late the close may be (the handshake timeout plus slack).
    pub stall_max_wait: Duration,
    pub stall_late: Duration,
    pub sources: Vec<Ipv4Addr>,
    pub burst_ip: Ipv4Addr,
    pub stall_ip: Ipv4Addr,
}

/// Tokens signed with the soak's own key (its `kid` is in the node's policy).
pub struct Minter {
    pub key: SigningKey,
    pub kid: String,
}

impl Minter {
    /// `Bearer <JWT>` for `sub`, issued now and valid for an hour (`expired`: an hour ago).
    pub fn bearer(&self, sub: &str, expired: bool) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (iat, exp) = if expired { (now - 7200, now - 3600) } else { (now, now + 3600) };
        let claims = serde_json::json!({"sub": sub, "iat": iat, "exp": exp, "jti": format!("{:032x}", rand::random::<u128>())});
        format!("Bearer {}", self.key.sign(Some(&self.kid), &claims).unwrap_or_default())
    }

    /// A token whose signature was altered (one character in its middle).
    pub fn forged(&self, sub: &str) -> String {
        let mut t = self.bearer(sub, false).into_bytes();
        let sig_start = t.iter().rposition(|&b| b == b'.').unwrap_or(0) + 1;
        let i = sig_start + (t.len() - sig_start) / 2;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap_or_default()
    }
}

/// What the load did so far (cumulative), read by the sampler every second.
#[derive(Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub messages: AtomicU64,
    pub refused: AtomicU64,
    pub live: AtomicI64,
    pub stalled_live: AtomicI64,
    pub stall_close_max_ms: AtomicU64,
    pub bursts: AtomicU64,
    pub bursts_limited: AtomicU64,
    pub burst_accepted: AtomicU64,
    pub unexpected: AtomicU64,
    /// Answers of the refusal mix by `kind status code` (`bad_token 403 token_invalid`).
    pub answers: Mutex<BTreeMap<String, u64>>,
    pub errors: Mutex<Vec<String>>,
    /// Handshake latencies of the churn's sessions (µs): this second's, and all.
    pub latency_second: Mutex<Vec<u32>>,
    pub latency_all: Mutex<Vec<u32>>,
}

impl Stats {
    /// Something that must not happen: counted, and the first 20 kept.
    pub fn unexpected(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 20 {
            e.push(what);
        }
    }

    fn answer(&self, key: String) {
        *self.answers.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }

    fn latency(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.latency_second.lock().unwrap_or_else(|p| p.into_inner()).push(us);
        self.latency_all.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }
}

pub struct Load {
    pub wire: Arc<Wire>,
    pub minter: Arc<Minter>,
    pub plan: Plan,
    pub stats: Arc<Stats>,
    pub stop: watch::Receiver<bool>,
}

impl Load {
    fn source(&self, i: u64) -> Ipv4Addr {
        self.plan.sources[(i % self.plan.sources.len() as u64) as usize]
    }
}

/// Runs `f(i)` in a task of its own every `period`, i = 0, 1, ... until the stop.
fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, f: F) -> JoinHandle<()>
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        if period.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            tokio::spawn(f(i));
            i += 1;
        }
    })
}

fn period(rate: f64) -> Duration {
    if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO }
}

/// Starts every part of the load; they stop (and the sessions close) when `stop` turns true.
pub fn start(load: Arc<Load>) -> Vec<JoinHandle<()>> {
    let p = &load.plan;
    let mut tasks = Vec::new();
    let l = load.clone();
    tasks.push(every(period(p.rate), load.stop.clone(), move |i| session(l.clone(), i)));
    let l = load.clone();
    tasks.push(every(period(p.bad_token_rate), load.stop.clone(), move |i| {
        let l = l.clone();
        async move {
            let sub = format!("soak-refused-{i}");
            let (token, want) =
                if i % 2 == 0 { (l.minter.forged(&sub), "token_invalid") } else { (l.minter.bearer(&sub, true), "token_expired") };
            refusal(&l, "bad_token", l.source(i), ORIGIN, &token, 403, want).await;
        }
    }));
    let l = load.clone();
    tasks.push(every(period(p.bad_origin_rate), load.stop.clone(), move |i| {
        let l = l.clone();
        async move {
            let token = l.minter.bearer(&format!("soak-origin-{i}"), false);
            refusal(&l, "bad_origin", l.source(i + 7), FOREIGN_ORIGIN, &token, 403, "origin_not_allowed").await;
        }
    }));
    let l = load.clone();
    tasks.push(every(p.burst_every, load.stop.clone(), move |i| {
        let l = l.clone();
        async move {
            // One subject, many addresses: the per-user handshake rate refuses.
            let sub = format!("soak-burst-{}", i % 64);
            let jobs: Vec<(Ipv4Addr, String)> =
                (0..l.plan.burst_size as u64).map(|k| (l.source(i + k), l.minter.bearer(&sub, false))).collect();
            burst(&l, "user_burst", jobs, l.plan.burst_size).await;
        }
    }));
    let l = load.clone();
    tasks.push(every(p.ip_burst_every, load.stop.clone(), move |i| {
        let l = l.clone();
        async move {
            // One address, many subjects: the per-IP handshake rate refuses.
            let jobs: Vec<(Ipv4Addr, String)> =
                (0..l.plan.ip_burst_size).map(|k| (l.plan.burst_ip, l.minter.bearer(&format!("soak-ipburst-{i}-{k}"), false))).collect();
            burst(&l, "ip_burst", jobs, 32).await;
        }
    }));
    let l = load.clone();
    tasks.push(every(period(p.stall_rate), load.stop.clone(), move |i| stalled(l.clone(), Stall::ALL[(i % 3) as usize])));
    tasks
}

/// One session of the churn: open, echo every interval for a random life, close.
async fn session(l: Arc<Load>, i: u64) {
    let sub = format!("soak-user-{}", i % l.plan.subjects.max(1) as u64);
    let token = l.minter.bearer(&sub, false);
    let started = Instant::now();
    let mut ws = match l.wire.handshake(l.source(i), ORIGIN, &token).await {
        Ok(Answer::Upgraded(ws)) => ws,
        Ok(Answer::Refused { status, code }) => return l.stats.unexpected(format!("session {sub}: refused with {status} {code}")),
        Err(e) => return l.stats.unexpected(format!("session {sub}: {e}")),
    };
    l.stats.latency(started.elapsed());
    l.stats.opened.fetch_add(1, Ordering::Relaxed);
    l.stats.live.fetch_add(1, Ordering::Relaxed);
    let (life, phase) = {
        let mut rng = rand::rng();
        let life = rng.random_range(l.plan.min_life.as_secs_f64()..=l.plan.max_life.as_secs_f64().max(l.plan.min_life.as_secs_f64()));
        (Duration::from_secs_f64(life), Duration::from_secs_f64(rng.random_range(0.0..=l.plan.message_interval.as_secs_f64())))
    };
    let payload: Vec<u8> = (0..l.plan.size).map(|_| b'a' + rand::random::<u8>() % 26).collect();
    let frame = masked_frame(0x1, &payload);
    let end = tokio::time::Instant::from_std(started + life);
    let mut next = tokio::time::Instant::now() + phase;
    let mut stop = l.stop.clone();
    let ok = loop {
        if next >= end || *stop.borrow() {
            break true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break true,
        }
        if let Err(e) = ws.echo(&frame, &payload).await {
            l.stats.unexpected(format!("session {sub}: {e}"));
            break false;
        }
        l.stats.messages.fetch_add(1, Ordering::Relaxed);
        next += l.plan.message_interval;
    };
    if ok {
        match ws.close().await {
            Ok(()) => {
                l.stats.closed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => l.stats.unexpected(format!("session {sub}: {e}")),
        }
    }
    l.stats.live.fetch_sub(1, Ordering::Relaxed);
}

/// One handshake that must be refused with `status` and `code`.
async fn refusal(l: &Load, kind: &str, source: Ipv4Addr, origin: &str, token: &str, status: u16, code: &str) {
    match l.wire.handshake(source, origin, token).await {
        Ok(Answer::Refused { status: s, code: c }) => {
            l.stats.refused.fetch_add(1, Ordering::Relaxed);
            l.stats.answer(format!("{kind} {s} {c}"));
            if s != status || c != code {
                l.stats.unexpected(format!("{kind}: refused with {s} {c}, expected {status} {code}"));
            }
        }
        Ok(Answer::Upgraded(ws)) => {
            l.stats.answer(format!("{kind} 101"));
            l.stats.unexpected(format!("{kind}: ACCEPTED (expected {status} {code})"));
            let _ = ws.close().await;
        }
        Err(e) => l.stats.unexpected(format!("{kind}: {e}")),
    }
}

/// Handshakes (source, token) at once, `concurrency` at a time: each accepted one is closed
/// at once, each refused one must be a 429, and at least one must be refused.
async fn burst(l: &Arc<Load>, kind: &'static str, jobs: Vec<(Ipv4Addr, String)>, concurrency: usize) {
    let queue = Arc::new(Mutex::new(jobs));
    let limited = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (l, queue, limited) = (l.clone(), queue.clone(), limited.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some((source, token)) = job else { return };
                match l.wire.handshake(source, ORIGIN, &token).await {
                    Ok(Answer::Upgraded(ws)) => {
                        l.stats.burst_accepted.fetch_add(1, Ordering::Relaxed);
                        l.stats.answer(format!("{kind} 101"));
                        close_burst(&l, kind, *ws).await;
                    }
                    Ok(Answer::Refused { status, code }) => {
                        l.stats.refused.fetch_add(1, Ordering::Relaxed);
                        l.stats.answer(format!("{kind} {status} {code}"));
                        if status == 429 {
                            limited.fetch_add(1, Ordering::Relaxed);
                        } else {
                            l.stats.unexpected(format!("{kind}: refused with {status} {code}, expected 101 or 429"));
                        }
                    }
                    Err(e) => l.stats.unexpected(format!("{kind}: {e}")),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    l.stats.bursts.fetch_add(1, Ordering::Relaxed);
    if limited.load(Ordering::Relaxed) > 0 {
        l.stats.bursts_limited.fetch_add(1, Ordering::Relaxed);
    } else {
        l.stats.unexpected(format!("{kind}: no handshake of the burst was rate-limited"));
    }
}

async fn close_burst(l: &Load, kind: &str, ws: SoakWs) {
    if let Err(e) = ws.close().await {
        l.stats.unexpected(format!("{kind}: {e}"));
    }
}

/// A stalled socket: the node must end it within the handshake timeout (plus slack).
async fn stalled(l: Arc<Load>, kind: Stall) {
    l.stats.stalled_live.fetch_add(1, Ordering::Relaxed);
    match l.wire.stall(l.plan.stall_ip, kind, l.plan.stall_max_wait).await {
        Ok(after) => {
            l.stats.stall_close_max_ms.fetch_max(after.as_millis() as u64, Ordering::Relaxed);
            l.stats.answer(format!("{} closed", kind.name()));
            if after > l.plan.stall_late {
                l.stats.unexpected(format!(
                    "{}: closed after {:.2} s, later than {:.2} s",
                    kind.name(),
                    after.as_secs_f64(),
                    l.plan.stall_late.as_secs_f64()
                ));
            }
        }
        Err(e) => l.stats.unexpected(e),
    }
    l.stats.stalled_live.fetch_sub(1, Ordering::Relaxed);
}
