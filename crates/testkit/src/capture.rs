//! What tests read back: this binary's own JSON log lines, and a child process's output.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// The JSON log lines (INFO and up, fields flattened) of every in-process node and
/// controller of this test binary: one global subscriber, installed at the first call.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a child's piped stdout and stderr line by line into one list, so the child never
/// blocks on a full pipe and the test can look at what it printed.
pub fn capture_lines(child: &mut tokio::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let streams = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>),
    ];
    for s in streams.into_iter().flatten() {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(s).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
    }
    lines
}
