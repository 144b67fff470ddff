//! Policy status (`GetPolicyStatus`, `palisade policy status`): each node's version against
//! the fleet's, and since when a node has not been serving it (see [`crate::lag`]).

use palisade_proto::controller::v1 as pb;
use palisade_proto::node::v1 as npb;

use crate::lag::{state_of, unix_ms};
use crate::service::{Controller, store_status};

impl Controller {
    /// Every registered node's version against the fleet's stored one.
    pub async fn policy_status(&self) -> Result<pb::PolicyStatus, tonic::Status> {
        let fleet_version = self.store.get().await.map_err(store_status)?.map_or(0, |(_, v)| v);
        let nodes = self.directory.snapshot();
        let ids: Vec<String> = nodes.iter().map(|n| n.record.id.clone()).collect();
        let results = self
            .fan_out(nodes.clone(), |n| async move {
                // Asked now: streamed statistics can be a second old, older than a push.
                Ok(n.client
                    .clone()
                    .get_stats(palisade_plane::telemetry::request(npb::GetStatsRequest {}))
                    .await?
                    .into_inner()
                    .policy_version)
            })
            .await;
        let now = unix_ms();
        self.lag.retain(&ids);
        let out: Vec<pb::NodePolicyStatus> = results
            .into_iter()
            .map(|(node_id, r)| {
                let seen = r.ok();
                if let Some(v) = seen {
                    self.lag.saw(&node_id, v);
                }
                let state = state_of(seen, fleet_version);
                // An unreachable node shows the last version it reported: to a push, a
                // status call or its statistics stream, whichever came last.
                let version = seen.unwrap_or_else(|| {
                    let streamed = nodes.iter().find(|n| n.record.id == node_id).and_then(|n| n.last_stats_at());
                    match (self.lag.last_seen(&node_id), streamed) {
                        (Some((v, at)), Some((s, s_at))) => {
                            if s_at > at {
                                s.policy_version
                            } else {
                                v
                            }
                        }
                        (Some((v, _)), None) => v,
                        (None, Some((s, _))) => s.policy_version,
                        (None, None) => 0,
                    }
                });
                let since_unix_ms = self.lag.observed(&node_id, state == "ok", now);
                pb::NodePolicyStatus { node_id, version, state: state.into(), since_unix_ms }
            })
            .collect();
        let converged = out.iter().all(|n| n.state == "ok");
        Ok(pb::PolicyStatus { fleet_version, nodes: out, converged })
    }
}
