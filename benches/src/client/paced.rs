//! Round trips at a fixed rate, for the bridge latency: each message is written at its
//! scheduled instant whether or not the previous echo is back (an open loop), and its
//! round trip runs from just before its write until its echo is parsed.

#[allow(unused_imports)]
use super::*;

/// The text payload of message `k`: its number, then letters up to `size` bytes.
fn payload(k: usize, size: usize) -> Vec<u8> {
    let mut p = format!("{k:012} ").into_bytes();
    p.extend((p.len()..size.max(p.len())).map(|i| b'a' + (i % 26) as u8));
    p
}

impl Wss {
    /// Writes `count` text messages of `size` bytes, the k-th at `start + k * period`, and
    /// returns each one's round trip in order. The writer and the reader share this task
    /// (one wake-up per echo), so neither waits for the other.
    pub async fn paced(
        &mut self,
        start: tokio::time::Instant,
        period: Duration,
        count: usize,
        size: usize,
    ) -> Result<Vec<Duration>, String> {
        let (mut rd_half, mut wr_half) = tokio::io::split(&mut self.stream);
        let rd = &mut self.rd;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let writer = async move {
            for k in 0..count {
                let frame = masked_frame(0x1, &payload(k, size));
                tokio::time::sleep_until(start + period * k as u32).await;
                let _ = tx.send((k, Instant::now()));
                wr_half.write_all(&frame).await.map_err(|e| format!("write: {e}"))?;
                wr_half.flush().await.map_err(|e| format!("flush: {e}"))?;
            }
            Ok::<(), String>(())
        };
        let reader = async move {
            let mut rtts = Vec::with_capacity(count);
            while rtts.len() < count {
                let (opcode, header, len) = loop {
                    if let Some(f) = parse_frame(rd) {
                        break f;
                    }
                    match tokio::time::timeout(IO_TIMEOUT, rd_half.read_buf(rd)).await {
                        Ok(Ok(0)) => return Err("closed by the server".to_string()),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("read: {e}")),
                        Err(_) => return Err("timed out waiting for an echo".into()),
                    }
                };
                let now = Instant::now();
                match opcode {
                    0x1 => {
                        let (k, sent) = rx.recv().await.ok_or("an echo of a message never sent")?;
                        if rd[header..header + len] != payload(k, size) {
                            return Err(format!("echo {k} differs from the message sent"));
                        }
                        rtts.push(now - sent);
                    }
                    0x8 => return Err("the server closed the session".into()),
                    // No Ping comes within the bench's ping interval (1800 s).
                    op => return Err(format!("unexpected opcode {op}")),
                }
                rd.advance(header + len);
            }
            Ok(rtts)
        };
        let (w, r) = tokio::join!(writer, reader);
        w?;
        r
    }
}
