//! The Palisade edge node: WSS listener, handshake gate (SPEC section 3), sessions
//! (section 4), the session registry and the in-process ticket store.

pub mod audit;
pub mod cluster;
pub mod config;
pub mod control;
pub mod egress;
pub mod etcd;
pub mod handshake;
pub mod http;
pub mod jwks;
pub mod limiter;
pub mod node;
pub mod policy_store;
pub mod refusal;
pub mod registry;
pub mod server;
pub mod session;
pub mod state;
pub mod tickets;
pub mod tls;
pub mod upstream;

pub use config::NodeConfig;
pub use node::{Node, NodeHandle};
pub use state::NodeState;
