//! The Palisade edge node: the WSS listener, the gate (SPEC section 3), sessions (section
//! 4), the upstream bridge, the session registry, tickets, the node control plane
//! (section 6) and cluster state in etcd (section 8).
//!
//! Public: what the binary and the tests drive (`Node`, `NodeHandle`, the configuration,
//! and the interfaces the control plane itself uses: the policy store and the registry).

mod audit;
pub mod cert_expiry;
pub mod cluster;
pub mod config;
mod control;
mod drain;
mod egress;
pub mod etcd;
pub mod events;
pub mod fleet_cap;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod handshake;
mod http;
mod instruments;
pub mod jwks;
mod limiter;
pub mod node;
pub mod policy_store;
mod refusal;
pub mod registry;
mod server;
mod session;
pub mod state;
mod telemetry;
mod tickets;
mod tls;
mod upstream;

pub use config::NodeConfig;
pub use node::{Node, NodeHandle};
pub use state::NodeState;
