//! Fleet views and actions: nodes, stats, connections, revoke, disconnect, send, drain.

#[allow(unused_imports)]
use super::*;

pub async fn nodes(c: &Conn) -> anyhow::Result<()> {
    let r = client(c).await?.list_nodes(pb::ListNodesRequest {}).await.map_err(rpc_err)?.into_inner();
    let v = json!(r.nodes.iter().map(|n| json!({"id": n.id, "wss": n.wss_address, "control": n.control_address, "version": n.version, "reachable": n.reachable, "started_unix_ms": n.started_unix_ms})).collect::<Vec<_>>());
    print(c.output, &v, || {
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.clone(),
                    n.wss_address.clone(),
                    n.control_address.clone(),
                    if n.reachable { "yes" } else { "no" }.into(),
                    n.version.clone(),
                ]
            })
            .collect();
        table(&["ID", "WSS", "CONTROL", "REACHABLE", "VERSION"], &rows)
    });
    Ok(())
}

pub async fn stats(c: &Conn, watch: bool) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    loop {
        let r = client.get_fleet_stats(pb::GetFleetStatsRequest {}).await.map_err(rpc_err)?.into_inner();
        let totals = r.totals.clone().unwrap_or_default();
        let v = json!({"totals": stats_json(&totals), "nodes": r.nodes.iter().map(stats_json).collect::<Vec<_>>(), "unreachable": r.unreachable_node_ids});
        print(c.output, &v, || {
            let mut rows: Vec<Vec<String>> = r.nodes.iter().map(row).collect();
            rows.push(row(&totals));
            let mut s =
                table(&["NODE", "POLICY", "ACTIVE", "ACCEPTED", "REFUSED", "MSG IN", "MSG OUT", "BYTES IN", "BYTES OUT", "READY"], &rows);
            if !r.unreachable_node_ids.is_empty() {
                s += &format!("unreachable: {}\n", r.unreachable_node_ids.join(", "));
            }
            s
        });
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn row(s: &npb::Stats) -> Vec<String> {
    vec![
        s.node_id.clone(),
        s.policy_version.to_string(),
        s.active_connections.to_string(),
        s.handshakes_accepted.to_string(),
        s.handshakes_refused.to_string(),
        s.messages_in.to_string(),
        s.messages_out.to_string(),
        s.bytes_in.to_string(),
        s.bytes_out.to_string(),
        if s.draining { "draining".into() } else { s.ready.to_string() },
    ]
}

pub async fn connections(c: &Conn, user: Option<String>, node: Option<String>) -> anyhow::Result<()> {
    let mut client = client(c).await?;
    // A subject across the whole fleet is FindSubject; anything else is ListConnections.
    let mut fleet = None; // (held slots, cap) of a subject with a fleet-wide cap
    let (found, unreachable) = match (user, node) {
        (Some(subject), None) => {
            let r = client.find_subject(pb::FindSubjectRequest { subject }).await.map_err(rpc_err)?.into_inner();
            if let Some(cap) = r.fleet_max_connections {
                fleet = Some((r.fleet_connections, cap));
            }
            (r.connections, r.unreachable_node_ids)
        }
        (user, node) => {
            let selector = user.map(|u| npb::Selector { target: Some(npb::selector::Target::Subject(u)) });
            let r = client
                .list_connections(pb::ListConnectionsRequest { selector, node_id: node.unwrap_or_default(), limit_per_node: 1000 })
                .await
                .map_err(rpc_err)?
                .into_inner();
            (r.connections, r.unreachable_node_ids)
        }
    };
    let r = pb::ListConnectionsResponse { connections: found, unreachable_node_ids: unreachable };
    let conns: Vec<(String, npb::Connection)> = r.connections.into_iter().filter_map(|sc| sc.connection.map(|c| (sc.node_id, c))).collect();
    let mut v =
        json!({"connections": conns.iter().map(|(n, c)| conn_json(n, c)).collect::<Vec<_>>(), "unreachable": r.unreachable_node_ids});
    if let Some((held, cap)) = fleet {
        v["fleet"] = json!({"connections": held, "max_connections": cap});
    }
    print(c.output, &v, || {
        let rows: Vec<Vec<String>> = conns
            .iter()
            .map(|(n, c)| {
                vec![
                    n.clone(),
                    c.conn_id.clone(),
                    c.subject.clone(),
                    c.session.clone(),
                    c.client_address.clone(),
                    c.route.clone(),
                    c.bytes_in.to_string(),
                    c.bytes_out.to_string(),
                ]
            })
            .collect();
        let mut out = table(&["NODE", "CONN", "SUBJECT", "SESSION", "CLIENT", "ROUTE", "BYTES IN", "BYTES OUT"], &rows);
        if let Some((held, cap)) = fleet {
            let held = held.map_or_else(|| "unknown (no etcd)".to_string(), |n| n.to_string());
            out += &format!("fleet-wide: {held} of {cap} connections (limits.per_user.fleet_max_connections)\n");
        }
        out
    });
    if !r.unreachable_node_ids.is_empty() {
        bail!("some nodes could not be asked: {}", r.unreachable_node_ids.join(", "));
    }
    Ok(())
}

pub async fn revoke(c: &Conn, t: RevokeTarget, issued_before: Option<String>, expires: Option<String>) -> anyhow::Result<()> {
    use pb::revoke_request::Target as T;
    let target = match (t.user, t.session) {
        (Some(u), _) => T::Subject(u),
        (None, Some(s)) => T::Session(s),
        (None, None) => bail!("give --user or --session"),
    };
    let r =
        client(c).await?.revoke(pb::RevokeRequest { target: Some(target), issued_before, expires }).await.map_err(rpc_err)?.into_inner();
    report(c.output, "revocation applied", r.version, &r.results, r.converged)
}

pub async fn disconnect(c: &Conn, t: Target, node: Option<String>, code: u32, reason: Option<String>) -> anyhow::Result<()> {
    if !(4000..=4999).contains(&code) {
        bail!("--code must be between 4000 and 4999");
    }
    let r = client(c)
        .await?
        .disconnect(pb::DisconnectRequest {
            selector: Some(selector(&t)),
            code,
            reason: reason.unwrap_or_default(),
            node_id: node.unwrap_or_default(),
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    counts(c.output, "disconnected", &r.nodes, r.closed)
}

pub async fn send(c: &Conn, t: SendTarget, data: String, node: Option<String>) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(&data).context("--data must be JSON")?;
    let target = Target { user: t.user, session: None, conn: t.conn, ip: None, all: t.all };
    let r = client(c)
        .await?
        .send(pb::SendRequest {
            selector: Some(selector(&target)),
            payload: data.into_bytes(),
            binary: false,
            node_id: node.unwrap_or_default(),
        })
        .await
        .map_err(rpc_err)?
        .into_inner();
    counts(c.output, "delivered", &r.nodes, r.delivered)
}

pub async fn drain(c: &Conn, node: String, deadline_seconds: u32) -> anyhow::Result<()> {
    let r = client(c).await?.drain(pb::DrainRequest { node_id: node, deadline_seconds }).await.map_err(rpc_err)?.into_inner();
    print(c.output, &json!({"node": r.node_id, "sessions_at_start": r.sessions_at_start}), || {
        format!("draining {}: {} sessions will be closed with 1001\n", r.node_id, r.sessions_at_start)
    });
    Ok(())
}
