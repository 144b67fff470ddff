//! What the fleet-wide user cap costs: handshakes on one node of the fleet with
//! `limits.per_user.fleet_max_connections` set against the same policy without it, in
//! interleaved rounds: the node's CPU per handshake, the handshake's wall time, and the
//! etcd writes per handshake read from etcd's own `/metrics` (raft proposals committed,
//! puts and deletes), from which the write rate of 1,000 handshakes/s follows.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use palisade_proto::controller::v1 as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::stack::{Operator, Stack};
use crate::client::{Client, handshake_burst};
use crate::fixture::Fixture;
use crate::proc::Server;
use crate::report::median;

pub struct CapCost {
    pub on_us: f64,
    pub off_us: f64,
    pub on_wall_us: f64,
    pub off_wall_us: f64,
    /// etcd raft proposals committed per accepted handshake, with the cap.
    pub proposals: f64,
    /// Puts + deletes per accepted handshake, with the cap.
    pub writes: f64,
}

/// `rounds` x (cap on, cap off) bursts of `n` handshakes on `node`.
pub async fn measure(
    ctl: &mut Operator,
    fixture: &Fixture,
    stack: &Stack,
    node: &Server,
    n: usize,
    rounds: usize,
) -> anyhow::Result<CapCost> {
    // Distinct subjects (a cap of 1,000 is never reached); the handshake closes at once.
    let client = Client::new(&fixture.ca_pem, 4, fixture.bearer_tokens(256)?)?;
    let ticks = crate::proc::clock_ticks_per_second();
    let (mut on, mut off, mut on_wall, mut off_wall, mut props, mut writes) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        for capped in [round % 2 == 0, round % 2 != 0] {
            apply(ctl, fixture, capped.then_some(1000)).await?;
            let before = (node.cpu()?, etcd_counters(stack.etcd_addr()).await?);
            let o = handshake_burst(&client, node.addr, n, 16).await;
            let after = (node.cpu()?, etcd_counters(stack.etcd_addr()).await?);
            if o.unsuccessful() > 0 {
                bail!("fleet cap {}: {}", if capped { "on" } else { "off" }, o.describe());
            }
            let us = after.0.since(&before.0, ticks).seconds * 1e6 / o.accepted as f64;
            let wall = o.wall.as_secs_f64() * 1e6 * 16.0 / o.accepted as f64;
            if capped {
                on.push(us);
                on_wall.push(wall);
                props.push((after.1.0 - before.1.0) / o.accepted as f64);
                writes.push((after.1.1 - before.1.1) / o.accepted as f64);
            } else {
                off.push(us);
                off_wall.push(wall);
            }
        }
    }
    apply(ctl, fixture, None).await?;
    Ok(CapCost {
        on_us: median(&on),
        off_us: median(&off),
        on_wall_us: median(&on_wall),
        off_wall_us: median(&off_wall),
        proposals: median(&props),
        writes: median(&writes),
    })
}

async fn apply(ctl: &mut Operator, fixture: &Fixture, cap: Option<u64>) -> anyhow::Result<()> {
    let mut doc = fixture.policy_doc.clone();
    doc.limits.per_user.fleet_max_connections = cap;
    let req = pb::ApplyPolicyRequest { policy: Some(palisade_policy::wire::versioned(0, &doc)), dry_run: false, expected_version: None };
    let r = ctl.apply_policy(req).await.context("ApplyPolicy")?.into_inner();
    if !r.converged {
        bail!("the cap policy did not converge: {:?}", r.results);
    }
    Ok(())
}

/// (raft proposals committed, puts + deletes) from etcd's Prometheus endpoint.
async fn etcd_counters(addr: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let value = |name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let proposals = value("etcd_server_proposals_committed_total");
    let writes = value("etcd_mvcc_put_total") + value("etcd_mvcc_delete_total");
    if proposals == 0.0 {
        bail!("etcd /metrics has no etcd_server_proposals_committed_total");
    }
    Ok((proposals, writes))
}
