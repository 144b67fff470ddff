//! Where the fleet's policy lives: etcd (`/palisade/<cluster>/policy`, version = the key's
//! mod revision, written with a compare on it), or memory for an in-process dev fleet.

use std::sync::Mutex;

use palisade_policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the policy changed concurrently: version {current}, expected {expected}; read it again and retry")]
    Conflict { expected: u64, current: u64 },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("stored policy is unreadable: {0}")]
    Corrupt(String),
}

pub enum FleetPolicy {
    Etcd { client: Box<etcd_client::Client>, key: String, keys: palisade_plane::etcd::Keys },
    Memory(Box<Mutex<Option<(Policy, u64)>>>),
}

impl FleetPolicy {
    pub fn etcd(client: etcd_client::Client, cluster: &str) -> FleetPolicy {
        let keys = palisade_plane::etcd::Keys::new(cluster);
        FleetPolicy::Etcd { client: Box::new(client), key: keys.policy(), keys }
    }

    pub fn memory(initial: Option<(Policy, u64)>) -> FleetPolicy {
        FleetPolicy::Memory(Box::new(Mutex::new(initial)))
    }

    /// The current document and its version, if any.
    pub async fn get(&self) -> Result<Option<(Policy, u64)>, StoreError> {
        match self {
            FleetPolicy::Memory(m) => Ok(m.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            FleetPolicy::Etcd { client, key, .. } => {
                let resp = client.as_ref().clone().get(key.as_str(), None).await?;
                let Some(kv) = resp.kvs().first() else { return Ok(None) };
                let text = std::str::from_utf8(kv.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let doc = Policy::from_yaml_or_json(text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Some((doc, kv.mod_revision() as u64)))
            }
        }
    }

    /// How many fleet-wide connection slots `sub` holds (`None` without etcd).
    pub async fn user_slots(&self, sub: &str) -> Result<Option<u64>, StoreError> {
        match self {
            FleetPolicy::Memory(_) => Ok(None),
            FleetPolicy::Etcd { client, keys, .. } => {
                let opts = etcd_client::GetOptions::new().with_prefix().with_count_only();
                let resp = client.as_ref().clone().get(keys.user_slots(sub), Some(opts)).await?;
                Ok(Some(resp.count().max(0) as u64))
            }
        }
    }

    /// Stores `doc` if the current version is `expected` (0: no policy yet). Returns the new
    /// version.
    pub async fn put(&self, doc: &Policy, expected: u64) -> Result<u64, StoreError> {
        match self {
            FleetPolicy::Memory(m) => {
                let mut cur = m.lock().unwrap_or_else(|p| p.into_inner());
                let current = cur.as_ref().map_or(0, |(_, v)| *v);
                if current != expected {
                    return Err(StoreError::Conflict { expected, current });
                }
                let v = current + 1;
                *cur = Some((doc.clone(), v));
                Ok(v)
            }
            FleetPolicy::Etcd { client, key, .. } => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, expected as i64)])
                    .and_then([TxnOp::put(key.as_str(), doc.to_yaml(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let resp = client.as_ref().clone().txn(txn).await?;
                if !resp.succeeded() {
                    let current = match resp.op_responses().into_iter().next() {
                        Some(etcd_client::TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.mod_revision() as u64),
                        _ => 0,
                    };
                    return Err(StoreError::Conflict { expected, current });
                }
                Ok(resp.header().map_or(0, |h| h.revision() as u64))
            }
        }
    }
}
