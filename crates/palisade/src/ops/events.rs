//! `palisade events`: the fleet's audit events, recent or followed.

#[allow(unused_imports)]
use super::*;

/// `palisade events`: the fleet's audit events, from `FleetControl.WatchEvents`.
pub struct EventsArgs {
    pub follow: bool,
    pub user: Option<String>,
    pub node: Option<String>,
    pub result: Option<String>,
    pub code: Option<String>,
    pub limit: u32,
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn event_json(e: &npb::Event) -> Value {
    json!({
        "time": rfc3339_ms(e.unix_ms), "unix_ms": e.unix_ms, "node": e.node_id, "event": e.kind, "result": e.result,
        "code": e.code, "status": e.status, "close_code": e.close_code, "subject": e.subject, "route": e.route,
        "conn_id": e.conn_id, "client_address": e.client_address, "origin": e.origin, "carrier": e.carrier,
        "reason": e.reason, "trace_id": e.trace_id, "policy_version": e.policy_version, "duration_us": e.duration_us,
        "bytes_in": e.bytes_in, "bytes_out": e.bytes_out, "count": e.count, "source": e.source,
    })
}

fn event_row(e: &npb::Event) -> Vec<String> {
    let code = match (e.code.is_empty(), e.close_code) {
        (true, c) if c != 0 => c.to_string(),
        _ => e.code.clone(),
    };
    let subject = if e.kind == "policy" && e.policy_version != 0 { format!("v{}", e.policy_version) } else { e.subject.clone() };
    vec![rfc3339_ms(e.unix_ms), e.node_id.clone(), e.kind.clone(), e.result.clone(), code, subject, e.route.clone(), e.trace_id.clone()]
}

const EVENT_HEADER: [&str; 8] = ["TIME", "NODE", "EVENT", "RESULT", "CODE", "SUBJECT", "ROUTE", "TRACE ID"];

pub async fn events(c: &Conn, a: EventsArgs) -> anyhow::Result<()> {
    use pb::events_message::Item;
    use std::io::Write as _;
    let req = pb::WatchEventsRequest {
        node_id: a.node.unwrap_or_default(),
        subject: a.user.unwrap_or_default(),
        result: a.result.unwrap_or_default(),
        code: a.code.unwrap_or_default(),
        follow: a.follow,
        limit: a.limit,
    };
    let mut stream = client(c).await?.watch_events(req).await.map_err(rpc_err)?.into_inner();
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    let mut out = std::io::stdout().lock();
    // Following: rows of fixed widths as events come; else one padded table at the end.
    let fixed = |cells: Vec<String>| {
        let w = [24, 14, 14, 9, 22, 16, 12, 32];
        let mut s = cells.iter().zip(w).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    if a.follow && c.output == Output::Table {
        write!(out, "{}", fixed(EVENT_HEADER.iter().map(|h| h.to_string()).collect()))?;
    }
    while let Some(m) = stream.message().await.map_err(rpc_err)? {
        match m.item {
            Some(Item::Event(e)) => match (c.output, a.follow) {
                (Output::Json, _) => writeln!(out, "{}", event_json(&e))?,
                (Output::Table, true) => write!(out, "{}", fixed(event_row(&e)))?,
                (Output::Table, false) => rows.push(event_row(&e)),
            },
            Some(Item::Dropped(d)) => {
                let from = if d.node_id.is_empty() { String::new() } else { format!(" (node {})", d.node_id) };
                match c.output {
                    Output::Json => writeln!(out, "{}", json!({"dropped": d.count, "node": d.node_id}))?,
                    Output::Table => writeln!(out, "dropped {} events{from}", d.count)?,
                }
            }
            Some(Item::Watching(w)) => {
                if c.output == Output::Json {
                    writeln!(out, "{}", json!({"watching": w.node_ids, "unreachable": w.unreachable_node_ids}))?;
                }
                if !w.unreachable_node_ids.is_empty() {
                    eprintln!("warning: no events from unreachable nodes: {}", w.unreachable_node_ids.join(", "));
                }
                unreachable = w.unreachable_node_ids;
            }
            None => {}
        }
        out.flush()?;
    }
    if !a.follow && c.output == Output::Table {
        write!(out, "{}", table(&EVENT_HEADER, &rows))?;
    }
    if !a.follow && !unreachable.is_empty() {
        bail!("some nodes could not be asked: {}", unreachable.join(", "));
    }
    Ok(())
}
