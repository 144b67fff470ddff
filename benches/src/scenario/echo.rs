//! Server CPU per echoed text message in authenticated sessions. At the start of a round
//! every server gets its sessions (not measured); then, in `slices` interleaved passes
//! over the servers, each session sends its share of messages in batches of `window` and
//! awaits their echoes. SPEC target: palisade at most 1.15x bare fastwebsockets over TLS.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;

use super::{Setup, Tally, banner, kinds, rotated, summarize};
use crate::EchoArgs;
use crate::client::{Wss, close_all, masked_frame, open_many};
use crate::proc::SETTLE;
use crate::report::Table;

pub const TARGET: f64 = 1.15;

pub async fn run(a: EchoArgs) -> anyhow::Result<()> {
    let rounds = a.common.rounds.unwrap_or(5).max(1);
    let (conns, messages, window) = (a.connections.max(1), a.messages.max(1), a.window.max(1));
    let slices = a.common.slices.clamp(1, messages);
    if a.size > 125 {
        bail!("--size is at most 125 bytes");
    }
    let kinds = kinds(&a.common);
    super::check_open_files((conns * kinds.len()) as u64 * 2 + 256)?;
    let setup = Setup::new(&a.common, conns)?;
    let mut servers = Vec::new();
    for k in &kinds {
        servers.push(setup.start(*k).await?);
    }
    banner(
        "echo",
        &setup,
        &servers,
        &format!(
            "{conns} sessions x {messages} messages of {} bytes per round and server in {slices} interleaved slices, window {window}, {rounds} rounds (+1 warm-up)",
            a.size
        ),
    );
    // Printable ASCII: valid UTF-8 for a text frame.
    let payload: Arc<Vec<u8>> = Arc::new((0..a.size).map(|i| b'a' + (i % 26) as u8).collect());

    let mut table = Table::new(&["round", "server", "sessions", "echoed", "errors", "wall s", "messages/s", "server CPU s", "us/message"]);
    let mut tallies: Vec<Vec<Tally>> = Vec::new();
    let mut problems = Vec::new();
    let order: Vec<usize> = (0..servers.len()).collect();
    // Round 0 is a warm-up (not reported).
    for r in 0..=rounds {
        let mut sessions: Vec<Vec<Wss>> = Vec::new();
        for s in &servers {
            let (opened, o) = open_many(&setup.client, s.addr, conns, 32, |ws| ws, false).await;
            if o.unsuccessful() > 0 {
                bail!("{}: opening the sessions: {}", s.name, o.describe());
            }
            sessions.push(opened);
        }
        tokio::time::sleep(SETTLE).await;
        let mut round: Vec<Tally> = servers.iter().map(|_| Tally::default()).collect();
        for slice in 0..slices {
            let share = messages / slices + usize::from(slice < messages % slices);
            for i in rotated(&order, r * slices + slice) {
                let s = &servers[i];
                let before = s.cpu()?;
                let started = Instant::now();
                let tasks: Vec<_> = std::mem::take(&mut sessions[i])
                    .into_iter()
                    .map(|mut ws| {
                        let payload = payload.clone();
                        tokio::spawn(async move {
                            let frame = masked_frame(0x1, &payload);
                            let r = ws.echo(share, window, &frame, &payload).await;
                            (ws, r)
                        })
                    })
                    .collect();
                let t = &mut round[i];
                for task in tasks {
                    match task.await {
                        Ok((ws, Ok(n))) => {
                            t.ops += n;
                            sessions[i].push(ws);
                        }
                        Ok((_, Err(e))) => {
                            t.failed += 1;
                            problems.push(format!("{}: {e}", s.name));
                        }
                        Err(e) => {
                            t.failed += 1;
                            problems.push(format!("{}: client task: {e}", s.name));
                        }
                    }
                }
                t.wall += started.elapsed();
                tokio::time::sleep(SETTLE).await;
                t.add_cpu(&s.cpu()?.since(&before, setup.ticks_per_second));
            }
        }
        for (i, open) in sessions.into_iter().enumerate() {
            let close_errors = close_all(open, 32).await;
            if close_errors > 0 {
                problems.push(format!("{}: {close_errors} close handshakes did not end cleanly", servers[i].name));
            }
        }
        if r == 0 {
            continue;
        }
        for (i, t) in round.iter().enumerate() {
            table.row(vec![
                r.to_string(),
                servers[i].name.clone(),
                conns.to_string(),
                t.ops.to_string(),
                t.failed.to_string(),
                format!("{:.2}", t.wall.as_secs_f64()),
                format!("{:.0}", t.ops as f64 / t.wall.as_secs_f64()),
                format!("{:.3}", t.cpu_s),
                format!("{:.2}", t.us_per_op()),
            ]);
        }
        tallies.push(round);
    }
    for s in servers {
        s.stop();
    }
    table.print();

    let names: Vec<String> = kinds.iter().map(|k| k.name()).collect();
    let mut json = summarize("echo", "message", 2, &names, &tallies, TARGET);
    println!("  session errors: {}", problems.len());
    json.set("connections", conns);
    json.set("messages", messages);
    json.set("window", window);
    json.set("size", a.size);
    json.set("slices", slices);
    json.set("failed", problems.len());
    json.set("command", crate::command_line());
    println!("{json}");
    if let Some(p) = problems.first() {
        bail!("{} session errors (first: {p})", problems.len());
    }
    Ok(())
}
