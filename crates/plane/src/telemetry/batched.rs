//! Log lines reach stdout in batches: a line is appended to a buffer, and a writer thread
//! writes what gathered 10 ms after the first line of a batch. One `write(2)` per batch
//! instead of one per line: the node logs two lines per connection (the audit line and
//! `session_closed`), and a write per line was ~4 µs of its CPU per handshake (kernel file
//! writes in the handshake profile). Access logs of Envoy and nginx are buffered the same
//! way (`access_log_flush_interval`, `buffer= flush=`).
//!
//! Nothing is dropped: past 1 MiB a writing thread writes the buffer itself (so a stalled
//! stdout slows logging down, as an unbuffered one does, instead of growing memory). The
//! process flushes at exit and in its panic hook; only an abrupt kill loses the last
//! ≤ 10 ms of lines.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

const DELAY: Duration = Duration::from_millis(10);
const INLINE_AT: usize = 1 << 20;

pub struct Batch<W> {
    /// The pending bytes and the sink, under one lock so that lines keep their order
    /// whoever writes them out.
    inner: Mutex<(Vec<u8>, W)>,
    wake: Condvar,
    /// No writer thread could be started: every line is written by its producer.
    direct: AtomicBool,
}

impl<W: Write + Send + 'static> Batch<W> {
    /// A batcher over `sink`, with its writer thread (which lives as long as the process).
    pub fn start(sink: W) -> &'static Batch<W> {
        let batch: &'static Batch<W> =
            Box::leak(Box::new(Batch { inner: Mutex::new((Vec::new(), sink)), wake: Condvar::new(), direct: AtomicBool::new(false) }));
        if std::thread::Builder::new().name("palisade-log".into()).spawn(move || batch.run()).is_err() {
            batch.direct.store(true, Ordering::Relaxed);
        }
        batch
    }

    fn run(&self) {
        loop {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            while g.0.is_empty() {
                g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            drop(g);
            std::thread::sleep(DELAY);
            self.flush();
        }
    }

    pub fn append(&self, line: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = g.0.is_empty();
        g.0.extend_from_slice(line);
        if g.0.len() >= INLINE_AT || self.direct.load(Ordering::Relaxed) {
            write_out(&mut g);
        } else if first {
            self.wake.notify_one();
        }
    }

    /// Writes what is pending now.
    pub fn flush(&self) {
        write_out(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// As `flush`, unless another thread holds the buffer (the panic hook must not wait).
    fn try_flush(&self) {
        if let Ok(mut g) = self.inner.try_lock() {
            write_out(&mut g);
        }
    }
}

fn write_out<W: Write>((buf, sink): &mut (Vec<u8>, W)) {
    if buf.is_empty() {
        return;
    }
    // A failing stdout loses these lines, as it would have unbuffered.
    let _ = sink.write_all(buf).and_then(|()| sink.flush());
    buf.clear();
    if buf.capacity() > INLINE_AT {
        buf.shrink_to(64 * 1024);
    }
}

fn stdout_batch() -> &'static Batch<io::Stdout> {
    static BATCH: OnceLock<&'static Batch<io::Stdout>> = OnceLock::new();
    BATCH.get_or_init(|| Batch::start(io::stdout()))
}

/// Writes the pending log lines (at exit).
pub fn flush() {
    stdout_batch().flush();
}

/// Flushes the pending lines before the default panic message.
pub fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        stdout_batch().try_flush();
        previous(info);
    }));
}

/// The `MakeWriter` of the stdout layer.
pub struct BatchedStdout;

pub struct Line;

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        stdout_batch().append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut g = self.0.lock().expect("sink");
            g.0.extend_from_slice(b);
            g.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").0.clone()).expect("utf-8")
        }
        fn writes(&self) -> usize {
            self.0.lock().expect("sink").1
        }
    }

    #[test]
    fn lines_arrive_in_order_in_one_write_without_an_explicit_flush() {
        let sink = Sink::default();
        let b = super::Batch::start(sink.clone());
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        for i in 0..100 {
            b.append(format!("line {i}\n").as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.text().len() < expected.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), expected, "the writer thread writes every line, in order");
        assert!(sink.writes() < 100, "batched: {} writes for 100 lines", sink.writes());
    }

    #[test]
    fn flush_writes_at_once_and_a_full_buffer_is_written_by_its_producer() {
        let sink = Sink::default();
        let b = super::Batch::start(sink.clone());
        b.append(b"first\n");
        b.flush();
        assert_eq!(sink.text(), "first\n");
        let big = vec![b'x'; super::INLINE_AT];
        b.append(&big);
        // Written by `append` itself, before it returned.
        assert_eq!(sink.text().len(), "first\n".len() + big.len());
    }
}
