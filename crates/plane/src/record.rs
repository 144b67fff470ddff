//! A node's entry in the registry (`/palisade/<cluster>/nodes/<node-id>`), as the node
//! writes it and the controller reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The node's base URL: `wss://host:port` (`ws://` behind a TLS-offloading proxy).
    pub wss: String,
    /// The control plane's `host:port`, empty without one.
    pub control: String,
    /// The node's software version.
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_unix_ms: u64,
    /// The route paths the node serves (so that `policy apply` can warn about an access
    /// rule for a route no node serves).
    #[serde(default)]
    pub routes: Vec<String>,
}

impl NodeRecord {
    /// The host part of the control address (for the TLS server name).
    pub fn control_host(&self) -> &str {
        self.control.rsplit_once(':').map_or(self.control.as_str(), |(h, _)| h).trim_matches(['[', ']'])
    }
}

/// gRPC trailer of a node's stale `ApplyPolicy` answer (FAILED_PRECONDITION): the
/// version the node serves, so the controller learns it without a second call.
pub const POLICY_VERSION_TRAILER: &str = "palisade-policy-version";

/// `host:port`, with brackets around an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_record_is_json_with_the_spec_fields() {
        let r = NodeRecord {
            id: "n1".into(),
            wss: "wss://127.0.0.1:8443".into(),
            control: "127.0.0.1:9443".into(),
            version: "0.1.0".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            started_unix_ms: 1,
            routes: vec!["/echo".into()],
        };
        let v: serde_json::Value = serde_json::to_value(&r).expect("json");
        for f in ["id", "wss", "control", "version", "labels", "started_unix_ms"] {
            assert!(v.get(f).is_some(), "{f}");
        }
        assert_eq!(serde_json::from_value::<NodeRecord>(v).expect("back"), r);
    }

    #[test]
    fn control_host_strips_port_and_brackets() {
        let mut r = NodeRecord {
            id: "n".into(),
            wss: String::new(),
            control: "[::1]:9443".into(),
            version: String::new(),
            labels: BTreeMap::new(),
            started_unix_ms: 0,
            routes: Vec::new(),
        };
        assert_eq!(r.control_host(), "::1");
        r.control = "node-a.internal:9443".into();
        assert_eq!(r.control_host(), "node-a.internal");
        assert_eq!(host_port("::1", 1), "[::1]:1");
        assert_eq!(host_port("a", 1), "a:1");
    }
}
