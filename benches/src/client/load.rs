//! Bursts and pools of connections, and what they measured.

#[allow(unused_imports)]
use super::*;

/// What a batch of upgrades gave.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: usize,
    pub refused: usize,
    pub failed: usize,
    /// Close handshakes that did not end cleanly (accepted sessions all the same).
    pub close_errors: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub first_error: Option<String>,
    pub wall: Duration,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.failed += o.failed;
        self.close_errors += o.close_errors;
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn record(&mut self, f: Failure) {
        match f {
            Failure::Refused(s) => {
                self.refused += 1;
                *self.statuses.entry(s).or_default() += 1;
                self.first_error.get_or_insert_with(|| format!("refused with HTTP {s}"));
            }
            Failure::Error(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Refused plus failed.
    pub fn unsuccessful(&self) -> usize {
        self.refused + self.failed
    }

    pub fn describe(&self) -> String {
        let mut s = format!("{} refused, {} failed", self.refused, self.failed);
        if !self.statuses.is_empty() {
            s.push_str(&format!(", statuses {:?}", self.statuses));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!(", first: {e}"));
        }
        s
    }
}

/// `n` handshakes, `concurrency` at a time, each closed right after its upgrade.
pub async fn handshake_burst(client: &Arc<Client>, addr: SocketAddr, n: usize, concurrency: usize) -> Outcome {
    open_many(client, addr, n, concurrency, |_| (), true).await.1
}

/// Opens `n` sessions, `concurrency` at a time. Each open session goes through `keep`
/// (and is returned), or is closed at once when `close_now`.
pub async fn open_many<T: Send + 'static>(
    client: &Arc<Client>,
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    keep: fn(Wss) -> T,
    close_now: bool,
) -> (Vec<T>, Outcome) {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut outcome = Outcome::default();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match client.open(addr).await {
                    Ok(ws) => {
                        outcome.accepted += 1;
                        if close_now {
                            if let Err(e) = ws.close().await {
                                outcome.close_errors += 1;
                                outcome.first_error.get_or_insert(e);
                            }
                        } else {
                            kept.push(keep(ws));
                        }
                    }
                    Err(f) => outcome.record(f),
                }
            }
            (kept, outcome)
        }));
    }
    let mut all = Vec::with_capacity(if close_now { 0 } else { n });
    let mut outcome = Outcome::default();
    for t in tasks {
        match t.await {
            Ok((kept, o)) => {
                all.extend(kept);
                outcome.merge(o);
            }
            Err(e) => outcome.record(Failure::Error(format!("client task: {e}"))),
        }
    }
    outcome.wall = started.elapsed();
    (all, outcome)
}

/// Closes sessions with the close handshake, `concurrency` at a time; returns the errors.
pub async fn close_all(sessions: Vec<Wss>, concurrency: usize) -> usize {
    let queue = Arc::new(std::sync::Mutex::new(sessions));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            loop {
                let ws = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(ws) = ws else { break };
                if ws.close().await.is_err() {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    errors
}
